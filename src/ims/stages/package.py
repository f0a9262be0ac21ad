"""Packaging (customize stage 3, also the end of a create job): squash the root and upload a new image."""

from __future__ import annotations

import time
from pathlib import Path

from ims.artifacts.s3 import ArtifactStore
from ims.client.artifacts import UploadResult, upload_image_artifacts
from ims.client.http import ImsClient
from ims.stages.environment import JobEnvironment
from ims.stages.reporting import Reporter, StageError
from ims.stages.rootpath import UnsafePath, regular_file_in_root
from ims.stages.tools import cpu_count, run_tool


def mksquashfs_argv(env: JobEnvironment, image_root: Path, output: Path) -> list[str]:
    argv = [
        "mksquashfs",
        str(image_root),
        str(output),
        "-noappend",
        # Anything still mounted inside the root (proc, sys, dev) is not part of the image.
        "-one-file-system",
        "-no-progress",
        "-comp",
        env.squashfs_compressor,
        "-processors",
        str(cpu_count()),
    ]
    if env.squashfs_level is not None:
        argv += ["-Xcompression-level", str(env.squashfs_level)]
    return argv


def boot_files(env: JobEnvironment, image_root: Path) -> tuple[Path, Path, Path | None]:
    """Kernel, initrd (required) and kernel parameters (optional) under the image's /boot."""
    try:
        kernel = regular_file_in_root(image_root, f"boot/{env.kernel_filename}")
        initrd = regular_file_in_root(image_root, f"boot/{env.initrd_filename}")
    except UnsafePath as exc:
        raise StageError(str(exc)) from exc
    try:
        parameters: Path | None = regular_file_in_root(image_root, f"boot/{env.kernel_parameters_filename}")
    except UnsafePath:
        parameters = None
    return kernel, initrd, parameters


def squash(env: JobEnvironment, reporter: Reporter, image_root: Path) -> Path:
    output = env.output_archive
    level = f" level {env.squashfs_level}" if env.squashfs_level is not None else ""
    with reporter.timed(f"mksquashfs ({env.squashfs_compressor}{level}) {image_root} -> {output}"):
        run_tool(mksquashfs_argv(env, image_root, output), reporter, echo=False)
    reporter.say(f"root file system archive: {output.stat().st_size} bytes")
    return output


def _require_upload_settings(env: JobEnvironment, client: ImsClient | None) -> tuple[ImsClient, ArtifactStore]:
    if client is None:
        raise StageError("IMS_URL is not set: cannot register the new image")
    if env.s3 is None:
        raise StageError("S3_ENDPOINT is not set: cannot upload the new image")
    if not env.image_root_archive_name:
        raise StageError("IMAGE_ROOT_ARCHIVE_NAME is not set")
    return client, ArtifactStore(env.s3)


def publish(
    env: JobEnvironment,
    reporter: Reporter,
    client: ImsClient | None,
    *,
    rootfs: Path,
    kernel: Path,
    initrd: Path,
    parameters: Path | None,
) -> UploadResult:
    """Register a new image from finished artifacts, point the job at it and mark the job `success`."""
    ims, store = _require_upload_settings(env, client)
    start = time.monotonic()
    result = upload_image_artifacts(
        ims,
        store,
        name=env.image_root_archive_name,
        arch=env.build_arch,
        job_id=env.job_id,
        rootfs=rootfs,
        kernel=kernel,
        initrd=initrd,
        kernel_parameters=parameters,
        bucket=env.boot_images_bucket,
        progress=reporter.say,
    )
    seconds = max(time.monotonic() - start, 1e-6)
    size = rootfs.stat().st_size
    reporter.say(f"uploaded image {result.image['id']} in {seconds:.2f} s ({size / seconds / 1e6:.1f} MB/s)")
    reporter.status("success")
    return result


def package(
    env: JobEnvironment, reporter: Reporter, client: ImsClient | None, image_root: Path | None = None
) -> UploadResult:
    """Squash the image root and publish it: the original's package_and_upload."""
    reporter.status("packaging_artifacts")
    _require_upload_settings(env, client)
    root = image_root or env.image_root
    if not root.is_dir():
        raise StageError(f"no image root at {root}")
    kernel, initrd, parameters = boot_files(env, root)
    reporter.say(f"kernel {kernel}, initrd {initrd}, kernel parameters {parameters or 'none'}")
    archive = squash(env, reporter, root)
    result = publish(env, reporter, client, rootfs=archive, kernel=kernel, initrd=initrd, parameters=parameters)
    archive.unlink()
    return result
