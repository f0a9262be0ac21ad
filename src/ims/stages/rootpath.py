"""Resolve a path inside an image root the way a process chrooted there would see it.

An image is untrusted data: its symlinks may be absolute (`/boot/vmlinuz -> /boot/vmlinuz-6.1`) or climb
with `..`. Read from the host, either could point at the host's own files. Here `/` and `..` stop at the
image root, so a resolved path can never leave it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

MAX_LINKS = 40  # what Linux allows before ELOOP


class UnsafePath(Exception):
    pass


def resolve_in_root(root: Path, relative: str | PurePosixPath) -> Path:
    """Return the host path of `relative` inside `root`, following symlinks with `root` as `/`.

    The final component need not exist; every symlink met on the way is followed.
    """
    root = Path(os.path.realpath(root))
    pending = list(PurePosixPath("/", relative).parts[1:])
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            info = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        if not stat.S_ISLNK(info.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > MAX_LINKS:
            raise UnsafePath(f"too many symbolic links resolving {relative}")
        target = PurePosixPath(os.readlink(candidate))
        if target.is_absolute():
            resolved = []
        pending = [*target.parts[1:], *pending] if target.is_absolute() else [*target.parts, *pending]
    return root.joinpath(*resolved)


def regular_file_in_root(root: Path, relative: str) -> Path:
    """The resolved path of `relative` when it ends at a regular file, else UnsafePath with the reason."""
    path = resolve_in_root(root, relative)
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise UnsafePath(f"/{relative} does not exist in the image") from exc
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(f"/{relative} is not a regular file in the image")
    return path
