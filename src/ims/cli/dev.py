"""`ims dev`: the embedded default on one machine — SeaweedFS S3 on 127.0.0.1, SQLite, the local runner."""

from __future__ import annotations

import json
import os
import secrets
import signal
from pathlib import Path
from types import FrameType

import typer

from ims.embedded.seaweedfs import SeaweedFS


def _credentials(data_dir: Path) -> tuple[str, str]:
    """Generated once per data directory and kept there, readable by root only."""
    path = data_dir / "s3-credentials.json"
    if path.exists():
        stored = json.loads(path.read_text())
        return str(stored["access_key"]), str(stored["secret_key"])
    access, secret = "ims" + secrets.token_hex(8), secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"access_key": access, "secret_key": secret}))
    path.chmod(0o600)
    return access, secret


def run_dev_stack(host: str, port: int, data_dir: Path, s3_port: int) -> None:
    from ims.cli.serve import serve

    data_dir = data_dir.resolve()
    access, secret = _credentials(data_dir)
    seaweed = SeaweedFS(
        data_dir / "seaweedfs", access_key=access, secret_key=secret, s3_port=s3_port, die_with_parent=True
    )
    seaweed.start()
    os.environ.update(
        {
            "IMS_DATA_DIR": str(data_dir),
            "S3_ENDPOINT": seaweed.endpoint,
            "S3_ACCESS_KEY": access,
            "S3_SECRET_KEY": secret,
        }
    )
    url = f"http://{host}:{port}"
    typer.echo(f"IMS API:     {url}   (try: curl {url}/v3/images)")
    typer.echo(f"S3 endpoint: {seaweed.endpoint}   (credentials in {data_dir / 's3-credentials.json'})")
    typer.echo(f"Data:        {data_dir}   (SQLite database ims.sqlite3, job directories in jobs/)")
    typer.echo(f"Client env:  export IMS_API_URL={url}; eval $(ims dev env --data-dir {data_dir})")
    # uvicorn restores this handler when it shuts down and then re-raises SIGTERM to it, so the `finally`
    # below runs and SeaweedFS is stopped gracefully instead of by the parent-death signal.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        serve(host, port)
    finally:
        seaweed.stop()


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def print_env(data_dir: Path, s3_port: int) -> None:
    access, secret = _credentials(data_dir.resolve())
    typer.echo(f"export S3_ENDPOINT=http://127.0.0.1:{s3_port}")
    typer.echo(f"export S3_ACCESS_KEY={access}")
    typer.echo(f"export S3_SECRET_KEY={secret}")
