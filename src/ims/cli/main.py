"""`ims`: the server, the worker, the data tools and (later) resource commands shaped like `cray ims`."""

from __future__ import annotations

from pathlib import Path

import typer

from ims.cli import (
    commands_deleted,
    commands_images,
    commands_jobs,
    commands_public_keys,
    commands_recipes,
    commands_remote_nodes,
    data_commands,
)
from ims.cli.session import ImsGroup

app = typer.Typer(help="Image Management Service.", no_args_is_help=True, pretty_exceptions_enable=False, cls=ImsGroup)
app.add_typer(data_commands.app, name="data")
# Resource commands shaped like `cray ims ...` (see docs/cli.md).
app.add_typer(commands_public_keys.app, name="public-keys")
app.add_typer(commands_recipes.app, name="recipes")
app.add_typer(commands_images.app, name="images")
app.add_typer(commands_jobs.app, name="jobs")
app.add_typer(commands_deleted.app, name="deleted")
app.add_typer(commands_remote_nodes.app, name="remote-build-nodes")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ims")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ims {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version of ims and exit."
    ),
) -> None:
    """Image Management Service."""


@app.command()
def serve(
    host: str = typer.Option(None, help="Listen address (default IMS_HOST or 127.0.0.1)."),
    port: int = typer.Option(None, help="Listen port (default IMS_PORT or 9100)."),
    workers: int = typer.Option(None, min=1, help="Server processes (default: one per CPU, at most 4)."),
) -> None:
    """Run the API and its background workers.

    Example: ims serve --host 127.0.0.1 --port 9100
    """
    from ims.cli.serve import serve as run
    from ims.settings import load_settings_or_exit

    settings = load_settings_or_exit()
    run(host or settings.host, port or settings.port, workers)


@app.command()
def worker() -> None:
    """Run only the background workers: S3 tasks, job launches and the job reconciler.

    Example: IMS_DATABASE_URL=postgresql+psycopg://ims@db/ims ims worker
    """
    from ims.cli.serve import run_worker

    run_worker()


dev_app = typer.Typer(help="The embedded default: SeaweedFS S3 + SQLite + local jobs on this machine.")
app.add_typer(dev_app, name="dev")

_DEFAULT_DATA = Path("var/ims")


@dev_app.command("up")
def dev_up(
    host: str = typer.Option("127.0.0.1", help="Listen address of the API."),
    port: int = typer.Option(9100, help="Port of the API."),
    data_dir: Path = typer.Option(_DEFAULT_DATA, envvar="IMS_DATA_DIR", help="Where records, S3 data and jobs live."),
    s3_port: int = typer.Option(8333, help="Port of the SeaweedFS S3 gateway on 127.0.0.1."),
) -> None:
    """Start SeaweedFS and IMS in the foreground; Ctrl-C stops both.

    Example: ims dev up --port 9100
    """
    from ims.cli.dev import run_dev_stack

    run_dev_stack(host, port, data_dir, s3_port)


@dev_app.command("s3")
def dev_s3(
    data_dir: Path = typer.Option(_DEFAULT_DATA, envvar="IMS_DATA_DIR", help="Where the S3 data and credentials live."),
    s3_port: int = typer.Option(8333, help="Port of the SeaweedFS S3 gateway on 127.0.0.1."),
    api_url: str = typer.Option("http://127.0.0.1:9100", envvar="IMS_API_URL", help="Announced to `ims dev env`."),
) -> None:
    """Run only the embedded SeaweedFS S3 in the foreground (what the ims-s3 systemd unit runs).

    Example: ims dev s3 --data-dir /var/lib/ims --s3-port 8333
    """
    from ims.cli.dev import run_s3_only

    run_s3_only(data_dir, s3_port, api_url)


@dev_app.command("env")
def dev_env(
    data_dir: Path | None = typer.Option(
        None, envvar="IMS_DATA_DIR", help="Data directory of the stack (default: the running stack's)."
    ),
    s3_port: int | None = typer.Option(None, help="Port of its S3 gateway (default: the running stack's)."),
) -> None:
    """Print the API URL and S3 settings of the running embedded stack as shell exports.

    Works from any directory: the running stack is found through its state file (/run/ims/dev-stack.json
    for root). Without a running stack it prints nothing and exits 1: it never makes credentials up.

    Example: eval $(ims dev env)
    """
    from ims.cli.dev import print_env

    print_env(data_dir, s3_port)


def main() -> None:
    app()
