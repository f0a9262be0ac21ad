"""Running IMS as a service: `scripts/install-service.sh` writes valid systemd units and their settings, and the
units' own ExecStart lines, run as systemd would run them, bring up a working IMS that `ims dev env` finds.
`scripts/start.sh` prints one line per step.

This machine has no running systemd (PID 1 is not systemd), so the units are checked with
`systemd-analyze verify` when it is installed (else parsed), and their commands are started here directly.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ims.embedded.ports import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
IMS = str(Path(sys.executable).parent / "ims")


def _install(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Path | int]]:
    where: dict[str, Path | int] = {
        "units": tmp_path / "systemd",
        "env": tmp_path / "etc/ims.env",
        "data": tmp_path / "lib/ims",
        "port": free_port(),
        "s3_port": free_port(),
    }
    env = {
        **os.environ,
        "IMS_SYSTEMD_DIR": str(where["units"]),
        "IMS_ENV_FILE": str(where["env"]),
        "IMS_SERVICE_DATA_DIR": str(where["data"]),
        "IMS_SERVICE_PORT": str(where["port"]),
        "IMS_SERVICE_S3_PORT": str(where["s3_port"]),
    }
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/install-service.sh"), "--no-deps", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result, where


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def _env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def _exec_start(unit: configparser.ConfigParser, env: dict[str, str]) -> list[str]:
    """ExecStart as systemd runs it: words split, `${VAR}` from the EnvironmentFile."""
    return [
        re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word) for word in shlex.split(unit["Service"]["ExecStart"])
    ]


def test_install_writes_valid_units_and_settings(tmp_path: Path) -> None:
    result, where = _install(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith(("==> ", "    ")) for line in lines), result.stdout
    # No systemd here: the script says so and how to start the units on a systemd host.
    if Path("/proc/1/comm").read_text().strip() != "systemd":
        assert "not started: systemd is not running on this machine" in result.stdout
        assert "systemctl daemon-reload && systemctl enable --now ims-s3.service ims.service" in result.stdout

    units = Path(where["units"])  # type: ignore[arg-type]
    s3_unit, ims_unit = units / "ims-s3.service", units / "ims.service"
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(s3_unit), str(ims_unit)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert verify.returncode == 0, verify.stderr
        assert "ims.service" not in verify.stderr and "ims-s3.service" not in verify.stderr, verify.stderr
    for path in (s3_unit, ims_unit):
        unit = _unit(path)
        assert {"Unit", "Service", "Install"} <= set(unit.sections())
        assert unit["Install"]["WantedBy"] == "multi-user.target"
        assert unit["Service"]["EnvironmentFile"] == str(where["env"])
        assert "@" not in path.read_text().replace("multi-user", "")  # every placeholder filled in
        binary = shlex.split(unit["Service"]["ExecStart"])[0]
        assert os.access(binary, os.X_OK), binary
    assert _unit(ims_unit)["Unit"]["Requires"] == "ims-s3.service"
    assert _unit(ims_unit)["Service"]["KillMode"] == "process"  # jobs outlive a restart

    env_file = Path(where["env"])  # type: ignore[arg-type]
    assert env_file.stat().st_mode & 0o077 == 0
    settings = _env_file(env_file)
    stored = json.loads((Path(where["data"]) / "s3-credentials.json").read_text())  # type: ignore[arg-type]
    assert settings["S3_ACCESS_KEY"] == stored["access_key"] and settings["S3_SECRET_KEY"] == stored["secret_key"]
    assert settings["S3_ENDPOINT"] == f"http://127.0.0.1:{where['s3_port']}"

    again, _ = _install(tmp_path)  # a second run keeps the settings (and so the keys)
    assert again.returncode == 0 and "keeping" in again.stdout
    assert _env_file(env_file) == settings


@pytest.mark.slow
def test_the_units_commands_run_a_working_ims(tmp_path: Path) -> None:
    result, where = _install(tmp_path, "--no-start")
    assert result.returncode == 0, result.stderr
    units = Path(where["units"])  # type: ignore[arg-type]
    settings = _env_file(Path(where["env"]))  # type: ignore[arg-type]
    state = tmp_path / "run/dev-stack.json"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("IMS_", "S3_"))}
    env = {**base, **settings, "IMS_DEV_STATE": str(state)}
    processes = []
    try:
        for name in ("ims-s3.service", "ims.service"):  # the order systemd starts them in (After=)
            argv = _exec_start(_unit(units / name), settings)
            log = (tmp_path / f"{name}.log").open("wb")
            processes.append(
                subprocess.Popen(
                    argv,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd="/",
                )
            )
            if name == "ims-s3.service":
                deadline = time.monotonic() + 60
                while not state.exists():
                    assert processes[0].poll() is None, (tmp_path / f"{name}.log").read_text()
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
        url = settings["IMS_API_URL"]
        deadline = time.monotonic() + 90
        while True:
            assert processes[1].poll() is None, (tmp_path / "ims.service.log").read_text()
            try:
                if httpx.get(f"{url}/healthz/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "ims.service.log").read_text()
            time.sleep(0.3)

        # A client anywhere finds the service's stack, as it finds `ims dev up`'s.
        found = subprocess.run(
            ["bash", "-c", f'eval "$({IMS} dev env)" && {IMS} images list --format json && echo $S3_ENDPOINT'],
            env={**base, "IMS_DEV_STATE": str(state), "IMS_CONFIG": "/nonexistent"},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert found.returncode == 0, found.stderr
        assert found.stdout.splitlines()[-1] == settings["S3_ENDPOINT"]
        assert json.loads("\n".join(found.stdout.splitlines()[:-1])) == []
    finally:
        for process in reversed(processes):  # systemctl stop: ims first, then its S3
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
    assert not state.exists()


@pytest.mark.slow
def test_start_sh_prints_one_line_per_step(tmp_path: Path) -> None:
    port, s3_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMS_", "S3_"))}
    env["IMS_DEV_STATE"] = str(tmp_path / "state.json")
    process = subprocess.Popen(
        [
            "bash",
            str(ROOT / "scripts/start.sh"),
            "--port",
            str(port),
            "--s3-port",
            str(s3_port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Stop:"):
                break
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
    steps = [line for line in lines if line.startswith("==> ")]
    assert [step.split(":")[0] for step in steps] == [
        "==> apt packages",
        "==> Python venv",
        "==> Python packages",
        "==> ims",
        "==> starting IMS",
    ], lines
    assert any(line.startswith("IMS API:") for line in lines)
    stop = next(line for line in lines if line.startswith("Stop:"))
    assert "Ctrl-C" in stop and str(process.pid) in stop  # start.sh execs the stack: the PID to kill is its own
