"""package: boot files from the image, mksquashfs, then the new image in IMS and S3."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from tests.stages.kit import LocalImage, base_env, reporter_for, unpack
from tests.support.images import KERNEL_VERSION, read_from_squashfs

from ims.stages.environment import JobEnvironment
from ims.stages.package import boot_files, squash
from ims.stages.reporting import StageError


def test_boot_files_follow_the_kernel_link_inside_the_image(job_dir: Path, test_image: LocalImage) -> None:
    root = unpack(test_image.archive, job_dir / "image-root")
    env = JobEnvironment.from_env(base_env(job_dir))
    kernel, initrd, parameters = boot_files(env, root)
    assert kernel == root / "boot" / f"vmlinuz-{KERNEL_VERSION}"
    assert initrd == root / "boot" / "initrd"
    assert parameters == root / "boot" / "kernel-parameters"


def test_missing_initrd_is_an_error_and_parameters_are_optional(job_dir: Path, test_image: LocalImage) -> None:
    root = unpack(test_image.archive, job_dir / "image-root")
    (root / "boot" / "kernel-parameters").unlink()
    env = JobEnvironment.from_env(base_env(job_dir))
    assert boot_files(env, root)[2] is None
    (root / "boot" / "initrd").unlink()
    (root / "boot" / "initrd").symlink_to("/etc")  # a directory is not an initrd
    with pytest.raises(StageError, match="/boot/initrd is not a regular file"):
        boot_files(env, root)


def test_squash_keeps_the_change_and_uses_zstd(job_dir: Path, test_image: LocalImage) -> None:
    root = unpack(test_image.archive, job_dir / "image-root")
    (root / "etc" / "motd").write_text("customized\n")
    env = JobEnvironment.from_env(base_env(job_dir, IMS_SQUASHFS_LEVEL="3"))
    reporter, log = reporter_for(env)

    archive = squash(env, reporter, root)

    assert archive == job_dir / "customized_image.sqsh"
    assert read_from_squashfs(archive, "etc/motd", job_dir) == b"customized\n"
    info = subprocess.run(["unsquashfs", "-s", str(archive)], capture_output=True, text=True, check=True).stdout
    assert "Compression zstd" in info
    assert "mksquashfs (zstd level 3)" in log.text()
    shutil.rmtree(root)
