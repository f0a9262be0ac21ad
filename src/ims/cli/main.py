"""`ims`: the server, the worker, the data tools and (later) resource commands shaped like `cray ims`."""

from __future__ import annotations

import typer

from ims.cli import data_commands

app = typer.Typer(help="Image Management Service.", no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(data_commands.app, name="data")


@app.command()
def serve(
    host: str = typer.Option(None, help="Listen address (default IMS_HOST or 127.0.0.1)."),
    port: int = typer.Option(None, help="Listen port (default IMS_PORT or 9100)."),
    workers: int = typer.Option(1, min=1, help="Server processes sharing the database."),
) -> None:
    """Run the API and its background workers.

    Example: ims serve --host 127.0.0.1 --port 9100
    """
    from ims.cli.serve import serve as run
    from ims.settings import load_settings_or_exit

    settings = load_settings_or_exit()
    run(host or settings.host, port or settings.port, workers)


def main() -> None:
    app()
