"""The job environment contract: defaults, the original's names, and refusal of unsafe values."""

from __future__ import annotations

from pathlib import Path

import pytest

from ims.stages.environment import JobEnvironment, JobEnvironmentError


def test_defaults_follow_the_original() -> None:
    env = JobEnvironment.from_env(
        {"IMS_JOB_ID": "abc-123", "IMS_JOB_TOKEN": "imsjob_hidden", "S3_ENDPOINT": "http://s3", "S3_SECRET_KEY": "s"}
    )
    assert env.image_root_parent == Path("/mnt/image")
    assert env.image_root == Path("/mnt/image/image-root")
    assert (env.kernel_filename, env.initrd_filename, env.kernel_parameters_filename) == (
        "vmlinuz",
        "initrd",
        "kernel-parameters",
    )
    assert env.ssh_jail is False and env.squashfs_compressor == "zstd" and env.poll_seconds == 0.1
    assert env.boot_images_bucket == "boot-images"
    assert env.ims_token == "imsjob_hidden" and "hidden" not in repr(env)
    # A job holds no S3 credential: even when some are in its environment, the stages do not read them.
    assert "http://s3" not in repr(env) and not hasattr(env, "s3")


def test_aarch64_forces_the_arm_kernel_name() -> None:
    env = JobEnvironment.from_env({"IMS_JOB_ID": "j", "BUILD_ARCH": "aarch64", "KERNEL_FILENAME": "vmlinuz"})
    assert env.kernel_filename == "Image"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KERNEL_FILENAME", "../../etc/shadow"),
        ("INITRD_FILENAME", "sub/initrd"),
        ("KERNEL_PARAMETERS_FILENAME", ".."),
        ("IMS_JOB_ID", "x\nMatch all"),
        ("REMOTE_BUILD_NODE", "x y"),
        ("IMS_SSH_LISTEN", "localhost\nPermitEmptyPasswords yes"),
        ("SSH_JAIL", "maybe"),
        ("BUILD_ARCH", "sparc"),
        ("DOWNLOAD_MD5SUM", "not-an-md5"),
        ("IMS_SQUASHFS_COMPRESSOR", "bzip9"),
    ],
)
def test_unsafe_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(JobEnvironmentError):
        JobEnvironment.from_env({"IMS_JOB_ID": "j", name: value})


def test_image_name_becomes_a_safe_file_name() -> None:
    env = JobEnvironment.from_env({"IMS_JOB_ID": "j", "IMAGE_ROOT_ARCHIVE_NAME": "../cos 2.0/test"})
    assert env.image_root_archive_name == "../cos 2.0/test"
    assert env.output_archive.parent == env.image_root_parent
    assert env.output_archive.name == "_cos_2.0_test.sqsh"
