"""`pip install` of the built wheel gives a working `ims`: the declared dependencies are enough.

The wheel is built with `python -m build` from a copy of the source tree (sdist, then the wheel from the
sdist, as a packager does), installed into a fresh venv with plain pip (its dependencies come from the
package index pip is set up with), and then run: `ims --version`, `ims serve` against SeaweedFS, and one
CLI call against that server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

from ims.embedded.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "var", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pinned(path: Path) -> list[Requirement]:
    pins = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            pins.append(Requirement(line))
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_pinned_runtime_package_is_declared_with_a_range_that_holds_its_pin() -> None:
    declared = {_canonical(req.name): req for req in map(Requirement, _project()["dependencies"])}
    pins = _pinned(ROOT / "requirements.txt")
    assert pins
    for pin in pins:
        name = _canonical(pin.name)
        assert name in declared, f"{pin.name} is pinned in requirements.txt but not declared in pyproject.toml"
        (version,) = [spec.version for spec in pin.specifier if spec.operator == "=="]
        assert declared[name].specifier.contains(version), f"{pin} is outside pyproject's {declared[name]}"
        assert declared[name].extras == pin.extras, f"{pin.name}: extras differ"
    assert set(declared) == {_canonical(pin.name) for pin in pins}, "pyproject declares a package not pinned"


def test_version_option_prints_the_installed_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ims", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ims {_project()['version']}"


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_serves(tmp_path: Path, s3_env: dict[str, str]) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE, symlinks=True)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = dist.glob("ims-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("IMS_", "S3_", "PYTHON"))}
    clean["PATH"] = f"{venv / 'bin'}:{clean.get('PATH', '/usr/bin:/bin')}"
    install = subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", str(wheel)],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    ims = str(venv / "bin/ims")
    version = subprocess.run(
        [ims, "--version"], env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"ims {_project()['version']}"
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import ims; print(ims.__file__)"],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed copy, not the source tree

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_env = {**clean, **s3_env, "IMS_DATA_DIR": str(tmp_path / "data")}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [ims, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=server_env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180  # the machine may be busy: migrations and buckets first
        while True:
            assert server.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/healthz/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
        key = tmp_path / "key.pub"
        created = subprocess.run(
            [ims, "public-keys", "create", "--name", "wheel", "--public-key", str(key), "--format", "json"],
            env={**clean, "IMS_API_URL": url, "IMS_CONFIG": str(tmp_path / "none.toml")},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["name"] == "wheel"
        assert httpx.get(f"{url}/v3/public-keys", timeout=10).json()[0]["name"] == "wheel"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)
