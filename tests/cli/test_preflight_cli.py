"""An image without the kernel and initrd packaging needs: `images import` warns, a customize job stops before SSH."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.cli.conftest import Cli
from tests.cli.test_jobs_cli import customize_args, key_pair, register_key  # noqa: F401 - fixture
from tests.stages.kit import KeyPair
from tests.support.images import KERNEL_VERSION, build_image_root, squash


def _import(cli: Cli, root: Path, tmp_path: Path, name: str) -> tuple[dict, str]:
    rootfs = squash(root, tmp_path / f"{name}.sqsh")
    result = cli.ok(
        "images",
        "import",
        name,
        "--rootfs",
        str(rootfs),
        "--kernel",
        str(tmp_path / "kernel"),
        "--initrd",
        str(tmp_path / "initrd"),
        "--format",
        "json",
    )
    return json.loads(result.stdout), result.stderr


def _kernel_and_initrd(tmp_path: Path) -> None:
    (tmp_path / "kernel").write_bytes(b"KERNEL")
    (tmp_path / "initrd").write_bytes(b"INITRD")


def test_import_warns_when_the_rootfs_lacks_kernel_and_initrd(cli: Cli, tmp_path: Path) -> None:
    _kernel_and_initrd(tmp_path)
    whole = build_image_root(tmp_path / "whole")
    _, stderr = _import(cli, whole, tmp_path, "whole")
    assert "warning" not in stderr  # /boot/vmlinuz is an absolute link to vmlinuz-<version>: followed in the image

    bare = build_image_root(tmp_path / "bare")
    (bare / "boot" / "vmlinuz").unlink()
    (bare / "boot" / "initrd").unlink()
    image, stderr = _import(cli, bare, tmp_path, "bare")
    assert image["name"] == "bare" and image["link"]  # imported all the same
    assert "ims: warning: the rootfs has no /boot/vmlinuz and no /boot/initrd" in stderr
    assert "customize job" in stderr

    dangling = build_image_root(tmp_path / "dangling")
    (dangling / "boot" / f"vmlinuz-{KERNEL_VERSION}").unlink()
    _, stderr = _import(cli, dangling, tmp_path, "dangling")
    assert "the rootfs has no /boot/vmlinuz:" in stderr


@pytest.mark.slow
def test_customize_of_an_image_without_kernel_fails_before_ssh(cli: Cli, key_pair: KeyPair, tmp_path: Path) -> None:  # noqa: F811
    _kernel_and_initrd(tmp_path)
    bare = build_image_root(tmp_path / "bare")
    (bare / "boot" / "vmlinuz").unlink()
    image, _ = _import(cli, bare, tmp_path, "no-kernel")
    key_id = register_key(cli, key_pair, tmp_path)

    result = cli(*customize_args(image["id"], key_id), "--wait", "--timeout", "120", "--format", "json")
    assert result.exit_code == 1, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "error"
    assert job["status_reason"].startswith("preflight: the image could not be packaged after customization")
    assert "no kernel: /boot/vmlinuz does not exist in the image" in job["status_reason"]
    assert "waiting_on_user" not in result.stderr and "log in with" not in result.stderr
    log = cli.ok("jobs", "logs", job["id"]).stdout
    assert "stage preflight: failed" in log and "sshd answers" not in log
