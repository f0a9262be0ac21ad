"""Reading what a finished kiwi-ng build left in the job directory (its target dir).

- `kis`: kiwi writes `<name>.<arch>-<version>-<kernel version>.kernel`, the initrd
  (`<name>.<arch>-<version>.initrd`), and the root file system image `<name>.<arch>-<version>` (squashfs, no
  extension). With `archive="false"` its `kiwi.result.json` names the three (`kis_kernel`, `kis_initrd`,
  `kis_rootfs`). By default (no `archive` attribute) kiwi also packs them into `<name>.<arch>-<version>.tar.xz`
  and its result record names only that archive (`kis_archive`); the loose files stay beside it, and when
  they do not, they are taken out of the archive.
- `tbz`: the root tree `build/image-root`, which IMS squashes itself. kiwi keeps its own metadata in the tree
  (`/image` with the recipe's `config.xml` and `config.sh`, `/.kconfig`, ...); kiwi never puts those into the
  images it makes, so neither does IMS: `remove_leftovers` deletes what kiwi's own exclude list names.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import yaml

from ims.stages.reporting import StageError

SQUASHFS_MAGIC = b"hsqs"
# kiwi's Defaults.get_exclude_list_for_root_data_sync(): its metadata, scratch and shared cache.
KIWI_EXCLUDES = ("image", ".kconfig", "run/*", "tmp/*", ".buildenv", "var/cache/kiwi")
CUSTOM_EXCLUDES = "image/exclude_files.yaml"  # the recipe's own list (kiwi reads it from the same place)


_NOT_ROOTFS = (".append", ".sha256", ".md5", ".packages", ".changes", ".verified", ".json", ".gz", ".log", ".yml")


class KisLayoutError(StageError):
    pass


def _is_squashfs(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == SQUASHFS_MAGIC
    except OSError:
        return False


def _result_files(target: Path) -> dict[str, Path]:
    record = target / "kiwi.result.json"
    if not record.is_file():
        return {}
    try:
        data = json.loads(record.read_text())
    except ValueError as exc:
        raise KisLayoutError(f"kiwi's result record {record} is not JSON: {exc}") from exc
    return {
        key: Path(entry["filename"])
        for key, entry in data.items()
        if isinstance(entry, dict) and isinstance(entry.get("filename"), str)
    }


def _classify(names: list[str]) -> dict[str, str]:
    """Which of kiwi's kis file names is the kernel, the initrd and the root file system."""
    found: dict[str, str] = {}
    for name in names:
        base = os.path.basename(name)
        if base.endswith(".kernel"):
            found.setdefault("kernel", name)
        elif ".initrd" in base:
            found.setdefault("initrd", name)
        elif not base.endswith(_NOT_ROOTFS) and "-xen" not in base:
            found.setdefault("rootfs", name)
    return found


def _from_archive(archive: Path, target: Path, say: Callable[[str], None]) -> dict[str, Path]:
    """kis files next to kiwi's archive when they are still there, else extracted from it."""
    stem = archive.name
    for suffix in (".xz", ".tar"):
        stem = stem.removesuffix(suffix)
    loose = _classify([path.name for path in sorted(target.glob(f"{stem}*")) if path.is_file() and path != archive])
    chosen = {key: target / name for key, name in loose.items()}
    if chosen.get("rootfs") and not _is_squashfs(chosen["rootfs"]):
        chosen.pop("rootfs")
    if all(key in chosen for key in ("kernel", "initrd", "rootfs")):
        say(f"kis artifacts beside kiwi's archive {archive.name}: " + ", ".join(p.name for p in chosen.values()))
        return chosen
    say(f"taking the kis artifacts out of kiwi's archive {archive}")
    out = target / "kis-archive"
    out.mkdir(exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile() and "/" not in m.name.strip("./")}
            wanted = _classify(list(members))
            for key, name in wanted.items():
                if key in chosen:
                    continue
                path = out / os.path.basename(name)
                source = tar.extractfile(members[name])
                assert source is not None
                with source, path.open("wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
                chosen[key] = path
    except (tarfile.TarError, OSError) as exc:
        raise KisLayoutError(f"cannot read kiwi's archive {archive}: {exc}") from exc
    return chosen


def kis_artifacts(target: Path, say: Callable[[str], None] = lambda _: None) -> tuple[Path, Path, Path]:
    """kiwi's kernel, initrd and squashfs root of a finished kis build in `target`."""
    results = _result_files(target)
    chosen = {
        key: results[f"kis_{key}"]
        for key in ("kernel", "initrd", "rootfs")
        if f"kis_{key}" in results and results[f"kis_{key}"].is_file()
    }
    if len(chosen) < 3 and "kis_archive" in results and results["kis_archive"].is_file():
        chosen = {**_from_archive(results["kis_archive"], target, say), **chosen}
    if len(chosen) < 3:
        # No record (or an old kiwi): the files by kiwi's naming, the root as the one squashfs.
        files = [path for path in sorted(target.iterdir()) if path.is_file()]
        named = _classify([path.name for path in files if not _is_squashfs(path)])
        for key in ("kernel", "initrd"):
            if key in named:
                chosen.setdefault(key, target / named[key])
        squashed = [path for path in files if _is_squashfs(path)]
        if squashed:
            chosen.setdefault("rootfs", squashed[0])
    missing = [name for name in ("kernel", "initrd", "rootfs") if name not in chosen]
    if missing:
        names = ", ".join(sorted(path.name for path in target.iterdir())) or "nothing"
        raise KisLayoutError(f"kiwi finished but left no {', '.join(missing)} in {target} (it left: {names})")
    if not _is_squashfs(chosen["rootfs"]):
        raise KisLayoutError(f"kiwi's root file system {chosen['rootfs']} is not a squashfs")
    return chosen["kernel"], chosen["initrd"], chosen["rootfs"]


def _custom_excludes(root: Path) -> list[str]:
    path = root / CUSTOM_EXCLUDES
    if path.is_symlink() or not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError):
        return []
    items = data.get("exclude") if isinstance(data, dict) else None
    return [str(item).lstrip("/") for item in items or [] if isinstance(item, str)]


def _real_directory(root: Path, relative: str) -> Path | None:
    """`root/relative` when every part of it is a real directory (no link may lead out of the image)."""
    current = root
    for part in Path(relative).parts:
        if part in ("", ".", ".."):
            return None
        current = current / part
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return None
        except OSError:
            return None
    return current


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def remove_leftovers(image_root: Path) -> list[str]:
    """Delete kiwi's own files from a finished root tree, as kiwi leaves them out of its images.

    Returns the removed paths, relative to the root. Links are never followed: a pattern whose parent is
    not a real directory inside the root is skipped.
    """
    removed: list[str] = []
    patterns = [*KIWI_EXCLUDES, *_custom_excludes(image_root)]  # read the custom list before /image goes
    for pattern in patterns:
        parent_text, _, leaf = pattern.rstrip("/").rpartition("/")
        parent = _real_directory(image_root, parent_text) if parent_text else image_root
        if parent is None or not leaf:
            continue
        for path in sorted(parent.glob(leaf)) if any(c in leaf for c in "*?[") else [parent / leaf]:
            if os.path.lexists(path):
                _remove(path)
                removed.append(str(path.relative_to(image_root)))
    return removed
