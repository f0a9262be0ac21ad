"""`ims data import|export`: the original's eight JSON data files."""

from __future__ import annotations

import typer

app = typer.Typer(help="Import or export the original IMS data files.", no_args_is_help=True)
