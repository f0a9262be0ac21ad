"""`eval $(ims dev env)` from any directory finds the running dev stack, or says it cannot; never invents keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ims.artifacts.s3 import ArtifactStore, S3Config
from ims.embedded.ports import free_port

IMS = str(Path(sys.executable).parent / "ims")


def _env(state: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("IMS_", "S3_"))}
    env.update({"IMS_DEV_STATE": str(state), "IMS_CONFIG": "/nonexistent/ims.toml", **extra})
    return env


def test_without_a_running_stack_it_says_so_and_makes_nothing(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [IMS, "dev", "env"],
        env=_env(tmp_path / "state.json"),
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""  # `eval` of nothing changes nothing
    assert "no running dev stack found" in result.stderr
    assert list(elsewhere.iterdir()) == []  # no ./var/ims with made-up keys

    named = subprocess.run(
        [IMS, "dev", "env", "--data-dir", str(elsewhere)],
        env=_env(tmp_path / "state.json"),
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert named.returncode == 1 and named.stdout == ""
    assert "holds no dev stack credentials" in named.stderr
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_dev_env_outside_the_repository_finds_the_running_stack(tmp_path: Path) -> None:
    state = tmp_path / "run" / "dev-stack.json"
    data = tmp_path / "data"
    port, s3_port = free_port(), free_port()
    log = (tmp_path / "dev.log").open("wb")
    stack = subprocess.Popen(
        [IMS, "dev", "up", "--port", str(port), "--s3-port", str(s3_port), "--data-dir", str(data)],
        env=_env(state),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert stack.poll() is None, (tmp_path / "dev.log").read_text()
            try:
                if state.exists() and httpx.get(f"http://127.0.0.1:{port}/healthz/ready", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "dev.log").read_text()
            time.sleep(0.2)
        assert json.loads(state.read_text())["pid"] == stack.pid

        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        result = subprocess.run(
            [IMS, "dev", "env"], env=_env(state), cwd=elsewhere, capture_output=True, text=True, timeout=60, check=True
        )
        exports = dict(line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines())
        stored = json.loads((data / "s3-credentials.json").read_text())
        assert exports == {
            "IMS_API_URL": f"http://127.0.0.1:{port}",
            "S3_ENDPOINT": f"http://127.0.0.1:{s3_port}",
            "S3_ACCESS_KEY": stored["access_key"],
            "S3_SECRET_KEY": stored["secret_key"],
        }
        assert list(elsewhere.iterdir()) == []
        s3 = ArtifactStore(S3Config(exports["S3_ENDPOINT"], exports["S3_ACCESS_KEY"], exports["S3_SECRET_KEY"]))
        assert s3.ping()

        # What the README does: eval the exports, then use the API and S3 from another directory.
        key = elsewhere / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        script = f'eval "$({IMS} dev env)" && {IMS} public-keys create --name me --public-key {key}.pub --format json'
        created = subprocess.run(
            ["bash", "-c", script],
            env=_env(state),
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["name"] == "me"
    finally:
        os.killpg(stack.pid, signal.SIGTERM)
        stack.wait(60)
        log.close()
    assert not state.exists()  # a stopped stack takes its state file with it
    gone = subprocess.run(
        [IMS, "dev", "env"], env=_env(state), cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert gone.returncode == 1 and gone.stdout == ""
