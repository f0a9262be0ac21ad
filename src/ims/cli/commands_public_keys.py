"""`ims public-keys`: SSH public keys that jobs install for root."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ims.cli.crud import RecordCommands, add_crud
from ims.cli.session import Session, api_command
from ims.client.config import ConfigError
from ims.domain.validation import check_public_key

app = typer.Typer(help="SSH public keys for job access (cray ims public-keys).", no_args_is_help=True)

add_crud(
    RecordCommands(
        app,
        "public-keys",
        "public key",
        lambda ims: ims.public_keys,
        ("id", "name", "created"),
        delete_note="Recoverable: see `ims deleted public-keys`.",
    )
)


@api_command(app, "create")
def create_key(
    session: Session,
    name: str = typer.Option(..., "--name", help="Name of the key record."),
    public_key: Path = typer.Option(
        ..., "--public-key", help="File with the OpenSSH public key ('-' reads stdin).", allow_dash=True
    ),
) -> None:
    """Register a public key, read from a file as cray does.

    Example: ims public-keys create --name "admin key" --public-key ~/.ssh/id_ed25519.pub
    """
    text = sys.stdin.read() if str(public_key) == "-" else public_key.read_text()
    problem = check_public_key(text)  # the server's rule, checked before sending (ims.domain.validation)
    if problem is not None:
        pub = Path(f"{public_key}.pub")
        hint = f" Did you mean {pub}?" if str(public_key) != "-" and pub.is_file() else ""
        raise ConfigError(f"{public_key}: {problem}{hint}")
    session.show(session.ims.public_keys.create(name, text.strip()))
