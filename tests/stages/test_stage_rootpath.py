"""Paths inside an untrusted image root resolve as a chrooted process would see them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ims.stages.rootpath import UnsafePath, regular_file_in_root, resolve_in_root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "vmlinuz-1").write_text("kernel")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("image passwd")
    return tmp_path


def test_absolute_links_are_read_inside_the_image(root: Path) -> None:
    (root / "boot" / "vmlinuz").symlink_to("/boot/vmlinuz-1")
    assert regular_file_in_root(root, "boot/vmlinuz") == root / "boot" / "vmlinuz-1"


def test_links_cannot_climb_out(root: Path) -> None:
    (root / "boot" / "escape").symlink_to("../../../../../../etc/passwd")
    (root / "boot" / "host").symlink_to("/etc/passwd")
    assert resolve_in_root(root, "boot/escape") == root / "etc" / "passwd"
    assert resolve_in_root(root, "boot/host") == root / "etc" / "passwd"
    assert regular_file_in_root(root, "boot/host").read_text() == "image passwd"


def test_directory_links_are_followed_in_the_image(root: Path) -> None:
    (root / "var").mkdir()
    (root / "var" / "tmp").mkdir()
    (root / "tmp").symlink_to("/var/tmp")
    assert resolve_in_root(root, "tmp/complete") == root / "var" / "tmp" / "complete"


def test_loops_and_non_files_are_refused(root: Path) -> None:
    (root / "boot" / "a").symlink_to("b")
    (root / "boot" / "b").symlink_to("a")
    with pytest.raises(UnsafePath, match="too many"):
        resolve_in_root(root, "boot/a")
    with pytest.raises(UnsafePath, match="not a regular file"):
        regular_file_in_root(root, "boot")
    with pytest.raises(UnsafePath, match="does not exist"):
        regular_file_in_root(root, "boot/initrd")
    os.mkfifo(root / "boot" / "fifo")
    with pytest.raises(UnsafePath, match="not a regular file"):
        regular_file_in_root(root, "boot/fifo")
