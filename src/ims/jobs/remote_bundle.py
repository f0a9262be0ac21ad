"""The code a job brings to a remote build node: a tar.gz IMS makes from its own installation.

It holds the parts of `ims` a job runs (ims.stages, ims.client, ims.domain and what they import, the
namespace launcher ims.jobs.nsinit and the node agent ims.jobs.remote_agent) and the third-party
packages they import, found by importing the stage code in a fresh interpreter and following the
installed distributions' requirements. Nothing of IMS is installed on the node: the runner unpacks the
bundle into `/tmp/ims_<job_id>/code` and puts it on PYTHONPATH for the node's python3. Compiled
modules come along as built for IMS's interpreter; the ones the stages reach (PyYAML, MarkupSafe) fall
back to pure Python when the node's python3 cannot load them.

The archive is made once per code version (a hash of the files it holds) and kept in the data dir.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import ims

# What the stages import (ims.stages and everything it reaches), listed by importing them in a clean interpreter.
_LIST_IMPORTS = r"""
import importlib, json, pkgutil, sys
import ims.stages
for package in (ims.stages,):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        try:
            importlib.import_module(info.name)
        except Exception:
            pass
import ims.stages.__main__, ims.jobs.nsinit, ims.jobs.remote_agent
for extra in ("httpcore", "h11", "anyio", "sniffio", "certifi", "idna"):
    try:
        importlib.import_module(extra)
    except Exception:
        pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""
IMS_PARTS = ("stages", "client", "domain", "artifacts", "recipes")
IMS_FILES = ("__init__.py", "settings.py", "jobs/__init__.py", "jobs/nsinit.py", "jobs/proc.py", "jobs/remote_agent.py")
SKIP_DIRS = {"tests", "test"}
# Compiled bytecode of IMS's interpreter comes along (valid by the sources' mtimes, kept by tar): the node's
# python3 then need not compile botocore and friends for every job (12 s against 1 s on a busy machine).
_PYC_TAG = f".{sys.implementation.cache_tag}.pyc"
_lock = threading.Lock()
_made: dict[str, Path] = {}  # per process: the bundle already made (the code does not change under a server)


def _top_level_paths(names: list[str]) -> list[Path]:
    """Files and directories of the third-party top-level modules `names`, from IMS's own interpreter."""
    import importlib.util

    stdlib = set(sys.stdlib_module_names)
    found: list[Path] = []
    for name in names:
        if name in stdlib or name == "ims" or name.startswith("_"):
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # modules made at run time by extensions (cython_runtime)
            continue
        if spec is None or spec.origin in (None, "built-in", "frozen"):
            continue
        if spec.submodule_search_locations:
            found.extend(Path(location) for location in spec.submodule_search_locations)
        else:
            found.append(Path(spec.origin))
    site = [path for path in found if "site-packages" in path.parts or "dist-packages" in path.parts]
    return sorted(set(site))


def _members(package_root: Path) -> list[tuple[Path, str]]:
    """(file on disk, name in the archive) for everything the bundle holds."""
    names = json.loads(
        subprocess.run([sys.executable, "-c", _LIST_IMPORTS], check=True, capture_output=True, timeout=300).stdout
    )
    members: list[tuple[Path, str]] = []
    for part in IMS_PARTS:
        root = package_root / part
        if root.is_dir():
            members += _walk(root, f"ims/{part}")
    for name in IMS_FILES:
        if (package_root / name).is_file():
            members.append((package_root / name, f"ims/{name}"))
    for path in _top_level_paths(names):
        members += _walk(path, path.name) if path.is_dir() else [(path, path.name)]
    return members


def _walk(root: Path, arcname: str) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
        for file in sorted(files):
            if file.endswith((".pyc", ".pyo")) and not file.endswith(_PYC_TAG):
                continue
            path = Path(directory) / file
            found.append((path, f"{arcname}/{path.relative_to(root)}"))
    return found


def bundle(cache_dir: Path) -> Path:
    """The bundle for this installation of IMS, made when missing; its path."""
    package_root = Path(ims.__file__).parent
    with _lock:
        known = _made.get(str(cache_dir))
        if known is not None and known.exists():
            return known
        members = _members(package_root)
        digest = hashlib.sha256(sys.version.encode())
        for path, name in members:
            info = path.stat()
            digest.update(f"{name}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
        target = cache_dir / f"ims-job-code-{digest.hexdigest()[:16]}.tar.gz"
        if target.exists():
            _made[str(cache_dir)] = target
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f"{target.name}.{os.getpid()}.new")
        with tarfile.open(scratch, "w:gz", compresslevel=1) as archive:
            for path, name in members:
                archive.add(path, arcname=name, recursive=False)
            marker = f"made by IMS {ims.__version__} for {sys.version.split()[0]}\n".encode()
            entry = tarfile.TarInfo("IMS-JOB-CODE")
            entry.size = len(marker)
            archive.addfile(entry, io.BytesIO(marker))
        os.replace(scratch, target)
        for old in cache_dir.glob("ims-job-code-*.tar.gz"):
            if old != target:
                old.unlink(missing_ok=True)
        _made[str(cache_dir)] = target
        return target
