"""What a finished kiwi build leaves, read by the build stage: every kis layout, kiwi's leftovers in a tbz root,
refusal of unpackageable recipes before kiwi runs, and progress bars collapsed in the job log.

kiwi itself is replaced here by a small stand-in executable (the stage's `IMS_KIWI_NG` setting) that writes
kiwi's result layouts exactly as kiwi 11 does (names, `kiwi.result.json`, the tar.xz) and draws its progress
bars; the real kiwi builds are in tests/stages/test_build.py and tests/jobs/test_create_e2e.py.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from ims.stages.build import BuildFailed, build_image
from ims.stages.create_env import CreateSettings
from ims.stages.environment import JobEnvironment
from ims.stages.kiwi_output import ProgressFilter, final_state
from ims.stages.reporting import Reporter

FAKE_KIWI = r'''#!PYTHON
"""Stand-in for kiwi-ng: writes the result layout named in <target-dir>/fake-layout into --target-dir."""
import json, os, subprocess, sys, tarfile, time
from pathlib import Path

args = sys.argv[1:]
target = Path(args[args.index("--target-dir") + 1])
kind = args[args.index("--type") + 1]
layout = (target / "fake-layout").read_text()
(target / "kiwi-ran").write_text(" ".join(args))
out = sys.stdout
for total in (57, 100):  # kiwi ends a bar with a newline only when it reaches exactly 100 items
    for current in range(1, total + 1):
        percent = current / total
        out.write("\rInstalling: [{}{}] {}%".format("#" * round(percent * 20), " " * (20 - round(percent * 20)), round(percent * 100)))
        if current == 100:
            out.write("\n")
        out.flush()
    out.write("[ INFO    ]: 10:00:0{} | after bar of {}\n".format(total % 10, total))
out.flush()

root = target / "build" / "image-root"
for d in ("boot", "etc", "image", "tmp", "run", "var/cache/kiwi"):
    (root / d).mkdir(parents=True, exist_ok=True)
(root / "boot" / "vmlinuz-6.1.0").write_bytes(b"MZ kernel")
(root / "boot" / "vmlinuz").symlink_to("vmlinuz-6.1.0")
(root / "boot" / "initrd").write_bytes(b"initrd")
(root / "etc" / "keep").write_text("stays")
(root / "image" / "config.xml").write_text("<image/>")
(root / "image" / "config.sh").write_text("#!/bin/sh")
(root / "image" / "exclude_files.yaml").write_text("exclude:\n  - /etc/secret-build-file\n")
(root / "etc" / "secret-build-file").write_text("x")
(root / ".kconfig").write_text("x")
(root / "tmp" / "scratch").write_text("x")
(root / "run" / "pidfile").write_text("x")
if kind == "tbz":
    (target / "img.x86_64-1.0.tar.xz").write_bytes(b"")
    sys.exit(0)

stem = "img.x86_64-1.0"
files = {
    "kernel": target / f"{stem}-6.1.0-amd64.kernel",
    "initrd": target / f"{stem}.initrd",
    "rootfs": target / stem,
    "append": target / f"{stem}.append",
    "sha": target / f"{stem}.sha256",
}
files["kernel"].write_bytes(b"MZ kis kernel")
files["initrd"].write_bytes(b"kis initrd")
files["append"].write_text("root=UUID=1234")
files["sha"].write_text("0" * 64)
subprocess.run(["mksquashfs", str(root / "etc"), str(files["rootfs"]), "-noappend", "-quiet", "-no-progress"], check=True, stdout=subprocess.DEVNULL)
record = {"image_packages": {"filename": str(target / f"{stem}.packages"), "use_for_bundle": True, "compress": False, "shasum": False}}
if layout == "kis-no-archive":
    for key in ("kernel", "initrd", "rootfs", "append"):
        record["kis_" + key] = {"filename": str(files[key]), "use_for_bundle": True, "compress": False, "shasum": False}
else:
    archive = target / f"{stem}.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        for key in ("kernel", "sha", "initrd", "rootfs", "append"):
            tar.add(files[key], arcname=files[key].name)
    record["kis_archive"] = {"filename": str(archive), "use_for_bundle": True, "compress": False, "shasum": True}
    if layout == "kis-archive-only":
        for path in files.values():
            path.unlink()
(target / "kiwi.result.json").write_text(json.dumps(record))
'''


def _job(tmp_path: Path, build_type: str, layout: str) -> tuple[JobEnvironment, Reporter, io.StringIO, Path]:
    """A job directory with the recipe, the stand-in kiwi and the layout it is to write.

    kiwi runs in the job's sandbox, which sees the job directory but not the rest of /tmp and gets none of
    the stage's environment: so the stand-in and its instructions live in the job directory.
    """
    parent = tmp_path / "job"
    recipe = parent / "recipe"
    recipe.mkdir(parents=True)
    (recipe / "config.xml").write_text(
        f'<image name="img"><preferences><packagemanager>apt</packagemanager>{build_type}</preferences></image>'
    )
    kiwi = parent / "fake-kiwi-ng"
    kiwi.write_text(FAKE_KIWI.replace("PYTHON", sys.executable, 1))
    kiwi.chmod(0o755)
    (parent / "fake-layout").write_text(layout)
    env = JobEnvironment.from_env({"IMS_JOB_ID": "job-1", "IMAGE_ROOT_PARENT": str(parent)})
    out = io.StringIO()
    return env, Reporter(env.job_id, None, out), out, kiwi


KIS_DEFAULT = '<type image="kis" filesystem="squashfs" initrd_system="dracut"/>'  # as kiwi's docs write it


@pytest.mark.parametrize("layout", ["kis-archive-loose", "kis-archive-only", "kis-no-archive"])
def test_every_kis_layout_gives_kernel_initrd_and_squashfs(tmp_path: Path, layout: str) -> None:
    build_type = KIS_DEFAULT if layout != "kis-no-archive" else KIS_DEFAULT.replace("/>", ' archive="false"/>')
    env, reporter, out, kiwi = _job(tmp_path, build_type, layout)
    result = build_image(env, reporter, CreateSettings(kiwi=str(kiwi)))
    assert result.kind == "kis", out.getvalue()
    assert result.kernel is not None and result.initrd is not None and result.rootfs is not None
    assert result.kernel.read_bytes() == b"MZ kis kernel"
    assert result.initrd.read_bytes() == b"kis initrd"
    assert result.rootfs.read_bytes()[:4] == b"hsqs"
    if layout == "kis-archive-only":
        assert result.rootfs.parent.name == "kis-archive"  # taken out of kiwi's tar.xz
        assert "taking the kis artifacts out of kiwi's archive" in out.getvalue()
    elif layout == "kis-archive-loose":
        assert result.rootfs == env.image_root_parent / "img.x86_64-1.0"


@pytest.mark.parametrize(
    ("build_type", "reason"),
    [
        ('<type image="kis"/>', 'a kis image needs filesystem="squashfs"'),
        ('<type image="kis" filesystem="ext4"/>', 'the recipe has filesystem="ext4"'),
        ('<type image="kis" filesystem="squashfs" compressed="true"/>', 'compressed="true"'),
        ('<type image="kis" filesystem="squashfs" initrd_system="none"/>', "needs an initrd"),
        ('<type image="oem" filesystem="ext4"/>', "'oem' is not supported"),
    ],
)
def test_a_recipe_that_cannot_be_packaged_is_refused_before_kiwi_runs(
    tmp_path: Path, build_type: str, reason: str
) -> None:
    env, reporter, _, kiwi = _job(tmp_path, build_type, "kis-no-archive")
    with pytest.raises(BuildFailed, match=reason):
        build_image(env, reporter, CreateSettings(kiwi=str(kiwi)))
    assert not (env.image_root_parent / "kiwi-ran").exists()


def test_tbz_root_loses_kiwis_own_files_and_the_log_keeps_bars_final_state(tmp_path: Path) -> None:
    env, reporter, out, kiwi = _job(tmp_path, '<type image="tbz"/>', "tbz")
    result = build_image(env, reporter, CreateSettings(kiwi=str(kiwi)))
    root = result.image_root
    assert root is not None
    for gone in ("image", ".kconfig", "tmp/scratch", "run/pidfile", "var/cache/kiwi", "etc/secret-build-file"):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    assert (root / "tmp").is_dir() and (root / "run").is_dir()  # only their contents go, as in kiwi's images
    assert (root / "etc/keep").read_text() == "stays"
    assert (root / "boot/vmlinuz").is_symlink()
    log = out.getvalue()
    assert "removed kiwi's own files from the image root" in log and "/image" in log

    assert "\r" not in log
    lines = log.splitlines()
    assert "Installing: [####################] 100%" in lines  # the bar that ends with its own newline
    # The 57-item bar never writes a newline; the next record was glued to it and is on its own line again.
    assert "[ INFO    ]: 10:00:07 | after bar of 57" in lines
    assert "[ INFO    ]: 10:00:00 | after bar of 100" in lines
    assert sum("Installing:" in line for line in lines) == 2
    assert len(log) < 4000


def test_progress_filter_across_chunk_boundaries() -> None:
    bars = ProgressFilter()
    text = "start\n\rA: [#  ] 33%\rA: [## ] 66%\rA: [###] 100%\nmiddle\r\nB: 1%\rB: 50%\rB: 99%[ INFO ]: next\nend"
    out = "".join(bars.feed(text[i : i + 3]) for i in range(0, len(text), 3)) + bars.flush()
    assert out == "start\nA: [###] 100%\nmiddle\nB: 99%\n[ INFO ]: next\nend"
    assert final_state("plain line") == "plain line"
    assert final_state("\r\r") == ""


def test_progress_filter_keeps_memory_small_on_an_endless_bar() -> None:
    bars = ProgressFilter()
    for i in range(100_000):
        assert bars.feed(f"\rbar {i}%") == ""
    assert len(bars._partial) < 70_000
    assert bars.feed("\n") == "bar 99999%\n"
