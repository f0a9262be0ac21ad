"""`ims dev`: the embedded default on one machine — SeaweedFS S3 on 127.0.0.1, SQLite, the local runner.

A running stack announces itself in a state file at a well-known place (`/run/ims/dev-stack.json` for
root, `$XDG_RUNTIME_DIR/ims/dev-stack.json` otherwise, or `IMS_DEV_STATE`): where the API and S3 answer
and which data directory holds the S3 credentials. `ims dev env` reads it from any directory; it never
makes credentials up, and says so when it finds no running stack.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

import typer

from ims.embedded.seaweedfs import SeaweedFS

CREDENTIALS_FILE = "s3-credentials.json"
STATE_ENV = "IMS_DEV_STATE"


class DevStackNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class DevState:
    pid: int
    data_dir: str
    s3_endpoint: str
    api_url: str = ""

    @property
    def credentials_file(self) -> Path:
        return Path(self.data_dir) / CREDENTIALS_FILE


def state_path() -> Path:
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    if os.geteuid() == 0:
        return Path("/run/ims/dev-stack.json")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or str(Path.home() / ".local/state")
    return Path(runtime) / "ims" / "dev-stack.json"


def write_state(state: DevState) -> Path:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    tmp.chmod(0o644)  # no secret in it: only where things are
    tmp.replace(path)
    return path


def remove_state(pid: int) -> None:
    """Remove the state file if it is still this process's (a newer stack may have replaced it)."""
    path = state_path()
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state() -> DevState:
    """The running stack's state, or DevStackNotFound saying why there is none."""
    path = state_path()
    try:
        raw = json.loads(path.read_text())
        state = DevState(int(raw["pid"]), str(raw["data_dir"]), str(raw["s3_endpoint"]), str(raw.get("api_url", "")))
    except FileNotFoundError:
        raise DevStackNotFound(f"no running dev stack found ({path} does not exist)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DevStackNotFound(f"cannot read the dev stack state {path}: {exc}") from None
    if not _alive(state.pid):
        raise DevStackNotFound(f"the dev stack of {state.data_dir} is not running (process {state.pid} is gone)")
    return state


def _credentials(data_dir: Path) -> tuple[str, str]:
    """Generated once per data directory and kept there, readable by root only. Only the stack calls this."""
    path = data_dir / CREDENTIALS_FILE
    if path.exists():
        return read_credentials(data_dir)
    access, secret = "ims" + secrets.token_hex(8), secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"access_key": access, "secret_key": secret}))
    path.chmod(0o600)
    return access, secret


def read_credentials(data_dir: Path) -> tuple[str, str]:
    path = data_dir / CREDENTIALS_FILE
    try:
        stored = json.loads(path.read_text())
        return str(stored["access_key"]), str(stored["secret_key"])
    except FileNotFoundError:
        raise DevStackNotFound(f"{data_dir} holds no dev stack credentials ({CREDENTIALS_FILE} is missing)") from None
    except PermissionError:
        raise DevStackNotFound(f"cannot read {path}: permission denied (it is root's)") from None
    except (OSError, ValueError, KeyError) as exc:
        raise DevStackNotFound(f"cannot read {path}: {exc}") from None


def start_seaweedfs(data_dir: Path, s3_port: int) -> SeaweedFS:
    access, secret = _credentials(data_dir)
    seaweed = SeaweedFS(
        data_dir / "seaweedfs", access_key=access, secret_key=secret, s3_port=s3_port, die_with_parent=True
    )
    seaweed.start()
    return seaweed


def run_dev_stack(host: str, port: int, data_dir: Path, s3_port: int) -> None:
    from ims.cli.serve import serve

    data_dir = data_dir.resolve()
    seaweed = start_seaweedfs(data_dir, s3_port)
    access, secret = _credentials(data_dir)
    os.environ.update(
        {
            "IMS_DATA_DIR": str(data_dir),
            "S3_ENDPOINT": seaweed.endpoint,
            "S3_ACCESS_KEY": access,
            "S3_SECRET_KEY": secret,
        }
    )
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"  # noqa: S104 - a name, not a bind
    state = write_state(DevState(os.getpid(), str(data_dir), seaweed.endpoint, url))
    typer.echo(f"IMS API:     {url}   (try: curl {url}/v3/images)")
    typer.echo(f"S3 endpoint: {seaweed.endpoint}   (credentials in {data_dir / CREDENTIALS_FILE})")
    typer.echo(f"Data:        {data_dir}   (SQLite database ims.sqlite3, job directories in jobs/)")
    typer.echo(f"Client env:  eval $(ims dev env)   (from any directory; the stack is described in {state})")
    typer.echo("Stop:        Ctrl-C here, or kill -TERM " + str(os.getpid()))
    # uvicorn restores this handler when it shuts down and then re-raises SIGTERM to it, so the `finally`
    # below runs and SeaweedFS is stopped gracefully instead of by the parent-death signal.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        serve(host, port)
    finally:
        remove_state(os.getpid())
        seaweed.stop()


def run_s3_only(data_dir: Path, s3_port: int, api_url: str) -> None:
    """The embedded SeaweedFS alone in the foreground (the systemd unit `ims-s3.service` runs this)."""
    data_dir = data_dir.resolve()
    seaweed = start_seaweedfs(data_dir, s3_port)
    write_state(DevState(os.getpid(), str(data_dir), seaweed.endpoint, api_url))
    typer.echo(f"S3 endpoint: {seaweed.endpoint}   (credentials in {data_dir / CREDENTIALS_FILE})")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        assert seaweed.process is not None
        code = seaweed.process.wait()
        raise SystemExit(f"ims: SeaweedFS exited with {code}; see {data_dir / 'seaweedfs' / 'weed.log'}")
    finally:
        remove_state(os.getpid())
        seaweed.stop()


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def env_lines(data_dir: Path | None, s3_port: int | None) -> list[str]:
    """The exports for a client of the running stack; DevStackNotFound when there is none to describe."""
    state: DevState | None = None
    try:
        state = read_state()
    except DevStackNotFound:
        if data_dir is None:
            raise
    if data_dir is not None:
        data_dir = data_dir.resolve()
        if state is not None and Path(state.data_dir) != data_dir:
            state = None  # the running stack is another one; trust only what the named directory holds
    directory = data_dir if data_dir is not None else Path(state.data_dir) if state else None
    assert directory is not None
    access, secret = read_credentials(directory)
    if s3_port is not None:
        endpoint = f"http://127.0.0.1:{s3_port}"
    elif state is not None:
        endpoint = state.s3_endpoint
    else:
        raise DevStackNotFound(f"no running dev stack uses {data_dir}; pass --s3-port to name its S3 port")
    lines = []
    if state is not None and state.api_url:
        lines.append(f"export IMS_API_URL={shlex.quote(state.api_url)}")
    lines += [
        f"export S3_ENDPOINT={shlex.quote(endpoint)}",
        f"export S3_ACCESS_KEY={shlex.quote(access)}",
        f"export S3_SECRET_KEY={shlex.quote(secret)}",
    ]
    return lines


def print_env(data_dir: Path | None, s3_port: int | None) -> None:
    try:
        lines = env_lines(data_dir, s3_port)
    except DevStackNotFound as exc:
        typer.echo(f"ims: {exc}", err=True)
        typer.echo(
            "ims: start it with `bash scripts/start.sh` (or `ims dev up`), or name its data directory with --data-dir",
            err=True,
        )
        raise typer.Exit(1) from None
    typer.echo("\n".join(lines))


def service_env(data_dir: Path, s3_port: int = 8333, port: int = 9100) -> str:
    """The EnvironmentFile of the systemd units (scripts/install-service.sh): where things are, and the S3 keys.

    The keys are the data directory's own (made once here when missing), so `ims dev env` and the units agree.
    """
    data_dir = data_dir.resolve()
    access, secret = _credentials(data_dir)
    api = f"http://127.0.0.1:{port}"
    return "\n".join(
        [
            "# IMS settings for ims.service and ims-s3.service (written by scripts/install-service.sh).",
            "# Holds the S3 keys: keep it mode 600. Any setting of the README's table may be added here.",
            f"IMS_DATA_DIR={data_dir}",
            "IMS_HOST=127.0.0.1",
            f"IMS_PORT={port}",
            f"IMS_S3_PORT={s3_port}",
            f"IMS_API_URL={api}",
            f"S3_ENDPOINT=http://127.0.0.1:{s3_port}",
            f"S3_ACCESS_KEY={access}",
            f"S3_SECRET_KEY={secret}",
            "",
        ]
    )


if __name__ == "__main__":  # `python -m ims.cli.dev service-env DATA_DIR [S3_PORT [PORT]]`, for the install script
    import sys

    if len(sys.argv) < 3 or sys.argv[1] != "service-env":
        sys.exit("usage: python -m ims.cli.dev service-env DATA_DIR [S3_PORT [PORT]]")
    numbers = [int(value) for value in sys.argv[3:5]]
    sys.stdout.write(service_env(Path(sys.argv[2]), *numbers))
