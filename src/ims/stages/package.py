"""Packaging (customize stage 3, also the end of a create job): squash the root and upload a new image.

No S3 credentials: the job creates its image record with its token and moves every artifact through IMS's
presigned part URLs (`ims.client.job_uploads`). The root file system goes up while mksquashfs writes it.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ims.client.artifacts import (
    ARTIFACT_KINDS,
    UploadedArtifact,
    UploadResult,
    image_metadata,
    register_image,
    upload_image_artifacts,
)
from ims.client.http import ImsClient
from ims.client.job_uploads import CompletedUpload, JobArtifactSink
from ims.domain.links import S3Location
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
    """mksquashfs alone (no upload): for tools and tests that want only the archive."""
    output = env.output_archive
    level = f" level {env.squashfs_level}" if env.squashfs_level is not None else ""
    with reporter.timed(f"mksquashfs ({env.squashfs_compressor}{level}) {image_root} -> {output}"):
        run_tool(mksquashfs_argv(env, image_root, output), reporter, echo=False)
    reporter.say(f"root file system archive: {output.stat().st_size} bytes")
    return output


def _require_upload_settings(env: JobEnvironment, client: ImsClient | None) -> ImsClient:
    if client is None:
        raise StageError("IMS_URL is not set: cannot register the new image")
    if not env.image_root_archive_name:
        raise StageError("IMAGE_ROOT_ARCHIVE_NAME is not set")
    return client


def _sink(env: JobEnvironment, client: ImsClient) -> JobArtifactSink:
    return JobArtifactSink(client, env.job_id, verify=env.s3_verify, part_size=env.upload_part_mib * 1024 * 1024)


def _uploaded(kind: str, done: CompletedUpload) -> UploadedArtifact:
    return UploadedArtifact(kind, S3Location(done.bucket, done.key), done.etag, done.md5, ARTIFACT_KINDS[kind])


def _say_upload(reporter: Reporter, start: float, image_id: str, size: int) -> None:
    seconds = max(time.monotonic() - start, 1e-6)
    reporter.say(f"uploaded image {image_id} in {seconds:.2f} s ({size / seconds / 1e6:.1f} MB/s)")


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
    """Register a new image from finished artifacts (kiwi's kis), point the job at it, mark it `success`."""
    ims = _require_upload_settings(env, client)
    start = time.monotonic()
    with _sink(env, ims) as sink:
        result = upload_image_artifacts(
            ims,
            sink,
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
    _say_upload(reporter, start, str(result.image["id"]), rootfs.stat().st_size)
    reporter.status("success")
    return result


class _Mksquashfs:
    """mksquashfs in the background; its output goes to a file the job log quotes on failure."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w+b")
        try:
            self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            self._log.close()
            raise StageError("mksquashfs is not installed") from exc

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self) -> None:
        code = self.process.wait()
        if code != 0:
            self._log.seek(0)
            lines = self._log.read().decode("utf-8", "replace").splitlines()
            tail = "; ".join(line for line in lines[-20:] if line.strip())
            raise StageError(f"mksquashfs exited with {code}: {tail[-800:]}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()
        self.log_path.unlink(missing_ok=True)


def squash_and_upload(
    env: JobEnvironment, reporter: Reporter, sink: JobArtifactSink, image_root: Path, image_id: str, name: str
) -> tuple[UploadedArtifact, int]:
    """mksquashfs with the rootfs going up while it is written (parts as the file grows; see FileUpload)."""
    output = env.output_archive
    output.unlink(missing_ok=True)  # never send a part of an older archive
    level = f" level {env.squashfs_level}" if env.squashfs_level is not None else ""
    location = S3Location(env.boot_images_bucket, f"{image_id}/rootfs")
    upload = sink.start(location, output)
    try:
        start = time.monotonic()
        reporter.say(f"mksquashfs ({env.squashfs_compressor}{level}) {image_root} -> {output}, uploading meanwhile ...")
        tool = _Mksquashfs(mksquashfs_argv(env, image_root, output), output.with_name(output.name + ".log"))
        try:
            upload.follow(tool.running)
            tool.wait()
        finally:
            tool.close()
        size = output.stat().st_size
        reporter.say(
            f"mksquashfs ({env.squashfs_compressor}{level}): done in {time.monotonic() - start:.2f} s, "
            f"{size} bytes; {upload.early_parts} parts sent while it wrote"
        )
        finished = time.monotonic()
        done = upload.finish(image_metadata(name, image_id, env.job_id))
        reporter.say(
            f"rootfs md5 {done.md5}: final pass and last parts in {time.monotonic() - finished:.2f} s "
            f"({upload.resent} part(s) sent again after mksquashfs rewrote them)"
        )
    except BaseException:
        upload.abort()
        raise
    finally:
        output.unlink(missing_ok=True)
    return _uploaded("rootfs", done), done.size


def package(
    env: JobEnvironment, reporter: Reporter, client: ImsClient | None, image_root: Path | None = None
) -> UploadResult:
    """Squash the image root and publish it: the original's package_and_upload.

    The record is created first so the rootfs can go up while mksquashfs writes it; the boot files go up
    meanwhile. No S3 credentials: every byte moves through IMS's presigned URLs with the job's token.
    """
    reporter.status("packaging_artifacts")
    ims = _require_upload_settings(env, client)
    root = image_root or env.image_root
    if not root.is_dir():
        raise StageError(f"no image root at {root}")
    kernel, initrd, parameters = boot_files(env, root)
    reporter.say(f"kernel {kernel}, initrd {initrd}, kernel parameters {parameters or 'none'}")
    name = env.image_root_archive_name
    small: dict[str, Path] = {"kernel": kernel, "initrd": initrd}
    if parameters is not None:
        small["boot_parameters"] = parameters
    start = time.monotonic()
    sizes: list[int] = []
    with _sink(env, ims) as sink:

        def upload(image_id: str) -> list[UploadedArtifact]:
            metadata = image_metadata(name, image_id, env.job_id)

            def one(kind: str) -> UploadedArtifact:
                location = S3Location(env.boot_images_bucket, f"{image_id}/{kind}")
                etag, md5 = sink.upload_file(small[kind], location, metadata=dict(metadata))
                return UploadedArtifact(kind, location, etag, md5, ARTIFACT_KINDS[kind])

            with ThreadPoolExecutor(max_workers=len(small), thread_name_prefix="ims-boot-files") as pool:
                boot = [pool.submit(one, kind) for kind in small]
                rootfs, size = squash_and_upload(env, reporter, sink, root, image_id, name)
                sizes.append(size)
                return [rootfs, *(future.result() for future in boot)]

        result = register_image(
            ims,
            sink,
            name=name,
            arch=env.build_arch,
            job_id=env.job_id,
            bucket=env.boot_images_bucket,
            upload=upload,
            progress=reporter.say,
        )
    _say_upload(reporter, start, str(result.image["id"]), sizes[0] if sizes else 0)
    reporter.status("success")
    return result
