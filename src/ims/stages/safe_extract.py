"""Extract a user-supplied recipe archive without letting any member escape the target directory.

Two layers, because either alone has gaps:
1. Before anything is written, every member is checked by name: no absolute paths, no `..` component,
   no device/fifo, no link whose target is absolute or leaves the directory, no member written through a
   symlink member. A hostile archive is therefore rejected whole, with nothing extracted.
2. Extraction itself uses tarfile's `data` filter, which checks the real paths on disk as it goes (it
   catches link chains that only escape once earlier links exist) and drops setuid bits and ownership.

Absolute symlink targets are refused even though a kiwi `root/` overlay might want one (e.g.
`etc/localtime -> /usr/share/zoneinfo/UTC`): such overlays belong in a `root.tar.gz` inside the recipe,
which kiwi unpacks into the image root, never onto the build host.
"""

from __future__ import annotations

import posixpath
import shutil
import tarfile
from pathlib import Path

_ALLOWED_TYPES = {"file", "dir", "symlink", "hardlink"}


class UnsafeArchiveError(ValueError):
    """A member that would write outside the target, or a kind of file a recipe must not contain."""

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"unsafe archive member {member!r}: {reason}")
        self.member = member
        self.reason = reason


class BadArchiveError(ValueError):
    """The file is not a readable tar archive."""


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.isdir():
        return "dir"
    if member.isreg():
        return "file"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    return "special file"


def _normalized(name: str, member: str) -> str:
    """The member's path relative to the target, refusing absolute and `..` forms."""
    if name.startswith("/") or name.startswith("\\"):
        raise UnsafeArchiveError(member, "absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(member, "path contains '..'")
    return "/".join(parts)


def _escapes(relative: str) -> bool:
    normal = posixpath.normpath(relative)
    return normal == ".." or normal.startswith("../")


def _through_symlink(path: str, symlinks: set[str]) -> bool:
    parents = path.split("/")[:-1]
    return any("/".join(parents[:depth]) in symlinks for depth in range(1, len(parents) + 1))


def check_members(members: list[tarfile.TarInfo]) -> None:
    """Raise UnsafeArchiveError for the first member that breaks the rules above."""
    symlinks: set[str] = set()
    for member in members:
        kind = _kind(member)
        if kind not in _ALLOWED_TYPES:
            raise UnsafeArchiveError(member.name, f"{kind} not allowed")
        path = _normalized(member.name, member.name)
        if _through_symlink(path, symlinks):
            raise UnsafeArchiveError(member.name, "path passes through a symlink in the archive")
        if kind == "symlink":
            target = member.linkname
            if not target or target.startswith("/"):
                raise UnsafeArchiveError(member.name, f"symlink target {target!r} is absolute or empty")
            if _escapes(posixpath.join(posixpath.dirname(path), target)):
                raise UnsafeArchiveError(member.name, f"symlink target {target!r} leaves the directory")
            symlinks.add(path)
        elif kind == "hardlink":
            # Hard link names are relative to the archive root, not to the member's directory.
            target = member.linkname
            if not target or target.startswith("/") or _escapes(target):
                raise UnsafeArchiveError(member.name, f"hard link target {target!r} leaves the directory")
            target = posixpath.normpath(target)
            if target in symlinks or _through_symlink(target, symlinks):
                raise UnsafeArchiveError(member.name, "hard link to or through a symlink in the archive")


def safe_extract(archive: Path, dest: Path) -> list[str]:
    """Extract `archive` (tar, optionally gz/bz2/xz) into `dest`; return the member names.

    `dest` must be absent or empty. If extraction fails, a `dest` created here is removed again so a
    retry starts clean.
    """
    created = not dest.exists()
    if not created and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed below; open errors reported apart
    except (tarfile.TarError, OSError) as error:
        raise BadArchiveError(f"{archive.name} is not a readable tar archive: {error}") from error
    try:
        with tar:
            tar.errorlevel = 1
            try:
                members = tar.getmembers()
            except tarfile.TarError as error:
                raise BadArchiveError(f"{archive.name} is damaged: {error}") from error
            check_members(members)
            dest.mkdir(parents=True, exist_ok=True)
            try:
                tar.extractall(dest, members=members, filter="data")
            except tarfile.FilterError as error:
                raise UnsafeArchiveError(error.tarinfo.name, str(error)) from error
            except tarfile.TarError as error:
                raise BadArchiveError(f"{archive.name} is damaged: {error}") from error
            return [member.name for member in members]
    except BaseException:
        if created and dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
        raise
