"""A small real Debian arm64 root for the aarch64 tests, run on this x86_64 host through qemu-user-static.

`debootstrap --foreign --arch arm64 --variant=minbase` from the archive this machine's apt uses
(ims.stages.apt_sources), then the second stage inside the root under qemu (slow: minutes), once: the
finished root is cached under IMS_TEST_CACHE (default /var/cache/ims-test) between test runs.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from ims.stages.apt_sources import debian_archive_uri
from tests.stages.kit import LocalImage
from tests.support.images import KERNEL_VERSION, squash

BINFMT = Path("/proc/sys/fs/binfmt_misc")
SUITE = "bookworm"
DONE_MARK = ".ims-test-complete"


def cache_dir() -> Path:
    return Path(os.environ.get("IMS_TEST_CACHE") or "/var/cache/ims-test")


def emulation_problem() -> str | None:
    """Make sure binfmt_misc runs aarch64 binaries through qemu; the reason when it cannot."""
    if not Path("/usr/libexec/qemu-binfmt/aarch64-binfmt-P").exists() and not shutil.which("qemu-aarch64-static"):
        return "qemu-user-static is not installed (apt-packages-test.txt lists it)"
    if not (BINFMT / "register").exists():
        mounted = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True)
        if mounted.returncode != 0:
            return f"binfmt_misc cannot be mounted: {mounted.stderr.decode(errors='replace').strip()}"
    if not (BINFMT / "qemu-aarch64").exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    if not (BINFMT / "qemu-aarch64").exists():
        return "qemu-aarch64 is not registered in binfmt_misc (binfmt-support)"
    return None


def arm64_root() -> Path:
    """The cached arm64 minbase root (built on first use; several test processes wait for one build)."""
    base = cache_dir() / f"debian-{SUITE}-arm64-minbase"
    root = base / "root"
    base.mkdir(parents=True, exist_ok=True)
    with (base / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (base / DONE_MARK).exists():
            return root
        if root.exists():
            shutil.rmtree(root)
        archive = debian_archive_uri(SUITE)
        log = base / "build.log"
        with log.open("wb") as out:
            subprocess.run(
                ["debootstrap", "--foreign", "--arch", "arm64", "--variant=minbase", SUITE, str(root), archive],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            subprocess.run(
                ["chroot", str(root), "/debootstrap/debootstrap", "--second-stage"],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
            )
        (base / DONE_MARK).write_text("done\n")
        return root


def arm64_image(work: Path, marker: str = "arm64-base") -> LocalImage:
    """A copy of the cached root with boot files (as the job's packaging wants them), squashed."""
    root = work / "root"
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", f"{arm64_root()}/.", str(root)], check=True)
    boot = root / "boot"
    boot.mkdir(exist_ok=True)
    # aarch64 kernels are named `Image` (the job's default kernel_file_name for aarch64); the registration of
    # the test image in S3 (tests.support.images) takes the kernel from vmlinuz-<version>.
    (boot / f"vmlinuz-{KERNEL_VERSION}").write_bytes(b"KERNEL arm64 " + os.urandom(64 * 1024))
    link = boot / "Image"
    if not os.path.lexists(link):
        link.symlink_to(f"/boot/vmlinuz-{KERNEL_VERSION}")
    (boot / "initrd").write_bytes(b"INITRD arm64 " + os.urandom(64 * 1024))
    (boot / "kernel-parameters").write_text("console=ttyAMA0\n")
    (root / "etc" / "ims-test-marker").write_text(f"{marker}\n")
    return LocalImage(root, squash(root, work / "image.sqsh"))
