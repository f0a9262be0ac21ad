"""Recipe archives: good ones extract with modes kept; hostile ones are refused, naming the member."""

from __future__ import annotations

import io
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from ims.stages.safe_extract import BadArchiveError, UnsafeArchiveError, safe_extract

Member = tuple[tarfile.TarInfo, bytes | None]


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def _dir(name: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _special(name: str, kind: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, None


def _archive(path: Path, members: list[Member], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_good_recipe_extracts_with_modes_and_internal_links(tmp_path: Path) -> None:
    archive = _archive(
        tmp_path / "recipe.tar.gz",
        [
            _dir("."),
            _file("./config.xml", b"<image/>"),
            _file("./config.sh", b"#!/bin/sh\n", 0o755),
            _dir("./root"),
            _dir("./root/etc"),
            _file("./root/etc/motd", b"hello"),
            _link("./root/etc/issue", "motd"),
            _link("./root/etc/issue.net", "../etc/motd"),
            _link("./copy-of-config.xml", "config.xml", tarfile.LNKTYPE),
        ],
    )
    dest = tmp_path / "recipe"
    names = safe_extract(archive, dest)
    assert "./config.xml" in names
    assert (dest / "config.xml").read_bytes() == b"<image/>"
    assert stat.S_IMODE((dest / "config.sh").stat().st_mode) == 0o755
    assert (dest / "root/etc/issue").is_symlink()
    assert (dest / "root/etc/issue").read_text() == "hello"
    assert (dest / "copy-of-config.xml").read_bytes() == b"<image/>"
    # The archive is gone from the picture: nothing written outside dest.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe", "recipe.tar.gz"]


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_every_compression_is_read(tmp_path: Path, mode: str) -> None:
    archive = _archive(tmp_path / "recipe.tar", [_file("config.xml", b"<image/>")], mode)
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out/config.xml").read_bytes() == b"<image/>"


HOSTILE: dict[str, tuple[Callable[[], list[Member]], str, str]] = {
    "absolute path": (lambda: [_file("/etc/evil", b"x")], "/etc/evil", "absolute"),
    "dot-dot path": (lambda: [_file("../evil", b"x")], "../evil", "'..'"),
    "dot-dot inside path": (lambda: [_file("a/../../evil", b"x")], "a/../../evil", "'..'"),
    "harmless-looking dot-dot": (lambda: [_dir("a"), _file("a/../b", b"x")], "a/../b", "'..'"),
    "symlink to absolute": (lambda: [_link("etc", "/etc")], "etc", "absolute"),
    "symlink escaping": (lambda: [_dir("a"), _link("a/up", "../../..")], "a/up", "leaves"),
    "write through symlink": (
        lambda: [_link("sub", "."), _file("sub/config.xml", b"x")],
        "sub/config.xml",
        "through a symlink",
    ),
    "symlink chain escaping": (
        # Each link looks harmless by name; together they climb out once `d/l1` exists on disk.
        lambda: [_dir("d"), _link("d/l1", ".."), _link("d/l1/l2", "..")],
        "d/l1/l2",
        "through a symlink",
    ),
    "hard link escaping": (lambda: [_link("pw", "../../etc/passwd", tarfile.LNKTYPE)], "pw", "leaves"),
    "hard link absolute": (lambda: [_link("pw", "/etc/passwd", tarfile.LNKTYPE)], "pw", "leaves"),
    "hard link to symlink": (
        lambda: [_link("s", "config.xml"), _link("h", "s", tarfile.LNKTYPE)],
        "h",
        "symlink",
    ),
    "hard link through symlink": (
        lambda: [_link("s", "."), _link("h", "s/config.xml", tarfile.LNKTYPE)],
        "h",
        "through a symlink",
    ),
    "character device": (lambda: [_special("null", tarfile.CHRTYPE)], "null", "device"),
    "block device": (lambda: [_special("sda", tarfile.BLKTYPE)], "sda", "device"),
    "fifo": (lambda: [_special("pipe", tarfile.FIFOTYPE)], "pipe", "fifo"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_naming_the_member(tmp_path: Path, case: str) -> None:
    build, member, words = HOSTILE[case]
    archive = _archive(tmp_path / "evil.tar.gz", [_file("config.xml", b"<image/>"), *build()])
    (tmp_path / "jail").mkdir()
    dest = tmp_path / "jail" / "recipe"
    with pytest.raises(UnsafeArchiveError) as caught:
        safe_extract(archive, dest)
    assert caught.value.member == member
    assert words in str(caught.value)
    assert repr(member) in str(caught.value)
    # Rejected before writing: nothing extracted, not even the good member, and nothing outside.
    assert not dest.exists()
    assert sorted(p.name for p in (tmp_path / "jail").iterdir()) == []


def test_existing_content_is_refused(tmp_path: Path) -> None:
    """Links already on disk are outside the name checks' view: extraction only goes into an empty dir."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "recipe"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    archive = _archive(tmp_path / "r.tar", [_file("sub/x", b"x")], "w")
    with pytest.raises(FileExistsError):
        safe_extract(archive, dest)
    assert not (outside / "x").exists()


def test_setuid_bits_are_dropped(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "r.tar", [_file("tool", b"#!/bin/sh\n", 0o4755)], "w")
    safe_extract(archive, tmp_path / "out")
    assert stat.S_IMODE((tmp_path / "out/tool").stat().st_mode) == 0o755


def test_not_an_archive(tmp_path: Path) -> None:
    junk = tmp_path / "recipe.tar.gz"
    junk.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(BadArchiveError):
        safe_extract(junk, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_archive_leaves_nothing(tmp_path: Path) -> None:
    whole = _archive(tmp_path / "whole.tar", [_file("a", b"a" * 100_000), _file("b", b"b" * 100_000)], "w")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[:150_000])
    with pytest.raises(BadArchiveError):
        safe_extract(cut, tmp_path / "out")
    assert not (tmp_path / "out").exists()
