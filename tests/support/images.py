"""A small real boot image for tests: a busybox root with /boot files, squashed and optionally put in S3."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ims.artifacts.s3 import ArtifactStore
from ims.client.artifacts import upload_artifact_set
from ims.domain.links import S3Location

BUSYBOX = Path("/bin/busybox")
APPLETS = (
    "sh",
    "ls",
    "cat",
    "touch",
    "echo",
    "mkdir",
    "rm",
    "id",
    "uname",
    "env",
    "grep",
    "test",
    "sleep",
    "true",
    "false",
    "stat",
    "md5sum",
    "head",
    "chmod",
    "ln",
    "cp",
    "mv",
    "printf",
)
KERNEL_VERSION = "6.1.0-ims-test"


def build_image_root(root: Path, *, marker: str = "base") -> Path:
    """Write a tiny root file system; `marker` ends up in /etc/os-release as VERSION_ID."""
    if not BUSYBOX.exists():
        raise RuntimeError("busybox-static is not installed (apt-packages.txt lists it)")
    for directory in ("bin", "sbin", "etc", "boot", "root", "dev", "proc", "sys", "run", "var/tmp", "usr/bin"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        link = root / "bin" / applet
        if not os.path.lexists(link):
            link.symlink_to("busybox")
    # sshd starts the host user's login shell (/bin/bash for root) inside the jail; busybox has no bash.
    bash = root / "bin" / "bash"
    bash.write_text('#!/bin/sh\nexec /bin/busybox sh "$@"\n')
    bash.chmod(0o755)
    (root / "etc" / "os-release").write_text(
        f'NAME="IMS test image"\nID=imstest\nVERSION_ID="{marker}"\nPRETTY_NAME="IMS test image {marker}"\n'
    )
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    resolv = root / "etc" / "resolv.conf"
    if not os.path.lexists(resolv):
        # Like a systemd image: a link that only works on a booted node.
        resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    boot = root / "boot"
    (boot / f"vmlinuz-{KERNEL_VERSION}").write_bytes(b"KERNEL " + os.urandom(64 * 1024))
    kernel_link = boot / "vmlinuz"
    if not os.path.lexists(kernel_link):
        # Absolute, as distributions write it: only right when read with the image as `/`.
        kernel_link.symlink_to(f"/boot/vmlinuz-{KERNEL_VERSION}")
    (boot / "initrd").write_bytes(b"INITRD " + os.urandom(128 * 1024))
    (boot / "kernel-parameters").write_text("console=ttyS0 ip=dhcp rd.shell\n")
    return root


def squash(root: Path, output: Path, compressor: str = "gzip") -> Path:
    subprocess.run(
        ["mksquashfs", str(root), str(output), "-noappend", "-no-progress", "-quiet", "-comp", compressor],
        check=True,
        capture_output=True,
    )
    return output


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_squashfs(archive: Path) -> list[str]:
    out = subprocess.run(["unsquashfs", "-lls", "-d", "", str(archive)], check=True, capture_output=True, text=True)
    return out.stdout.splitlines()


def read_from_squashfs(archive: Path, member: str, scratch: Path) -> bytes:
    """Extract one member (relative path) and return its bytes."""
    target = scratch / f"extract-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["unsquashfs", "-no-progress", "-d", str(target), str(archive), member], check=True, capture_output=True
    )
    return (target / member).read_bytes()


@dataclass(frozen=True)
class RegisteredImage:
    image_id: str
    bucket: str
    manifest: dict[str, Any]
    manifest_link: dict[str, Any]
    rootfs: S3Location
    rootfs_md5: str


def register_in_s3(
    store: ArtifactStore,
    root: Path,
    archive: Path,
    *,
    bucket: str = "boot-images",
    image_id: str | None = None,
    name: str = "ims-test-image",
) -> RegisteredImage:
    """Put rootfs/kernel/initrd/boot_parameters and manifest.json under `<bucket>/<image_id>/`."""
    image_id = image_id or str(uuid.uuid4())
    uploaded = upload_artifact_set(
        store,
        bucket=bucket,
        image_id=image_id,
        files={
            "rootfs": archive,
            "kernel": root / "boot" / f"vmlinuz-{KERNEL_VERSION}",
            "initrd": root / "boot" / "initrd",
            "boot_parameters": root / "boot" / "kernel-parameters",
        },
        metadata={"x-shasta-ims-image-name": name, "x-shasta-ims-image-id": image_id},
    )
    rootfs = next(item for item in uploaded.artifacts if item.kind == "rootfs")
    return RegisteredImage(image_id, bucket, uploaded.manifest, uploaded.manifest_link, rootfs.location, rootfs.md5)
