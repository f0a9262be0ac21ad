"""`ims deleted images|recipes|public-keys`: soft-deleted records, to undelete or remove for good."""

from __future__ import annotations

from enum import StrEnum

import typer

from ims.cli.crud import RecordCommands, add_crud
from ims.cli.session import Session, api_command

app = typer.Typer(help="Soft-deleted records (cray ims deleted): undelete or remove for good.", no_args_is_help=True)

_COLUMNS = {
    "images": ("id", "name", "arch", "link.path", "created", "deleted"),
    "recipes": ("id", "name", "recipe_type", "linux_distribution", "arch", "link.path", "created", "deleted"),
    "public-keys": ("id", "name", "created", "deleted"),
}
_NOUNS = {"images": "image", "recipes": "recipe", "public-keys": "public key"}


class Operation(StrEnum):
    undelete = "undelete"


def _group(resource: str) -> typer.Typer:
    group = typer.Typer(help=f"Deleted {resource}.", no_args_is_help=True)
    add_crud(
        RecordCommands(
            group,
            f"deleted {resource}",
            f"deleted {_NOUNS[resource]}",
            lambda ims: ims.deleted.of(resource),
            _COLUMNS[resource],
            delete_note="Permanent: the record and its S3 artifacts are removed.",
        )
    )

    def update(
        session: Session,
        record_id: str = typer.Argument(..., metavar="ID"),
        operation: Operation = typer.Option(..., "--operation", help="undelete"),
    ) -> None:
        session.ims.deleted.of(resource).undelete(record_id)

    def update_all(session: Session, operation: Operation = typer.Option(..., "--operation", help="undelete")) -> None:
        session.ims.deleted.of(resource).undelete_all()

    example = "6d1cbd6a-3ea4-4b2a-9c3e-1f1e7c0fbd2f"
    update.__doc__ = (
        f"Restore a deleted {_NOUNS[resource]} (same id).\n\n"
        f"Example: ims deleted {resource} update {example} --operation undelete"
    )
    update_all.__doc__ = (
        f"Restore every deleted {_NOUNS[resource]}.\n\nExample: ims deleted {resource} updateall --operation undelete"
    )
    api_command(group, "update", output=False)(update)
    api_command(group, "updateall", output=False)(update_all)
    return group


for _resource in _COLUMNS:
    app.add_typer(_group(_resource), name=_resource)
