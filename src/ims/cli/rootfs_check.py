"""Does a squashfs root file system carry the kernel and initrd a customize job will package from it?

A customize job takes the new image's kernel and initrd from the root's `/boot/<kernel_file_name>` and
`/boot/<initrd_file_name>` (defaults `vmlinuz` and `initrd`) and stops before SSH when they are missing.
`ims images import` warns about it up front. Only the directory table is read (`unsquashfs -lls`), which
takes well under a second even for a multi-gigabyte image.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import subprocess
from pathlib import Path

_ENTRY = re.compile(r"^(?P<kind>\S)\S*\s+\S+\s+.*?\d{4}-\d\d-\d\d \d\d:\d\d (?P<path>/.*)$")
MAX_LINKS = 40


class ListingError(Exception):
    pass


def list_boot(rootfs: Path) -> dict[str, tuple[str, str]]:
    """`/boot/...` entries of a squashfs: path -> (kind letter of `ls -l`, link target or '')."""
    tool = shutil.which("unsquashfs")
    if tool is None:
        raise ListingError("unsquashfs is not installed (squashfs-tools)")
    result = subprocess.run(
        [tool, "-lls", "-d", "", str(rootfs), "boot"], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ListingError(f"not a readable squashfs: {lines[-1] if lines else 'unsquashfs failed'}")
    entries: dict[str, tuple[str, str]] = {}
    for line in result.stdout.splitlines():
        match = _ENTRY.match(line)
        if not match:
            continue
        path, _, target = match.group("path").partition(" -> ")
        entries[path] = (match.group("kind"), target if match.group("kind") == "l" else "")
    return entries


def _resolves_to_file(entries: dict[str, tuple[str, str]], path: str) -> bool:
    for _ in range(MAX_LINKS):
        entry = entries.get(path)
        if entry is None:
            return False
        kind, target = entry
        if kind != "l":
            return kind == "-"
        path = posixpath.normpath(target if target.startswith("/") else posixpath.join(posixpath.dirname(path), target))
    return False


def missing_boot_files(rootfs: Path, kernel: str = "vmlinuz", initrd: str = "initrd") -> list[str]:
    """The `/boot/...` paths a customize job would need but the rootfs lacks (links followed inside it)."""
    entries = list_boot(rootfs)
    return [f"/boot/{name}" for name in (kernel, initrd) if not _resolves_to_file(entries, f"/boot/{name}")]
