"""list / describe / delete / deleteall, the same for every record type of `cray ims`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import typer

from ims.cli.session import Session, api_command
from ims.client.resources import Collection, Ims

EXAMPLE_ID = "6d1cbd6a-3ea4-4b2a-9c3e-1f1e7c0fbd2f"


@dataclass(frozen=True)
class RecordCommands:
    app: typer.Typer
    command: str  # as typed: "images", "deleted images", ...
    noun: str  # "image", "deleted image", ...
    collection: Callable[[Ims], Collection]
    columns: Sequence[str]
    key: str = "ID"
    example: str = EXAMPLE_ID
    delete_note: str = ""


def add_list(spec: RecordCommands) -> None:
    def list_records(session: Session) -> None:
        session.show(spec.collection(session.ims).list(), spec.columns)

    list_records.__doc__ = f"List {spec.noun} records.\n\nExample: ims {spec.command} list --format json"
    api_command(spec.app, "list")(list_records)


def add_describe(spec: RecordCommands) -> None:
    def describe_record(session: Session, record_id: str = typer.Argument(..., metavar=spec.key)) -> None:
        session.show(spec.collection(session.ims).get(record_id))

    describe_record.__doc__ = f"Show one {spec.noun}.\n\nExample: ims {spec.command} describe {spec.example}"
    api_command(spec.app, "describe")(describe_record)


def add_deletes(spec: RecordCommands) -> None:
    def delete_record(session: Session, record_id: str = typer.Argument(..., metavar=spec.key)) -> None:
        spec.collection(session.ims).delete(record_id)

    def delete_all(session: Session) -> None:
        spec.collection(session.ims).delete_all()

    note = f" {spec.delete_note}" if spec.delete_note else ""
    delete_record.__doc__ = f"Delete one {spec.noun}.{note}\n\nExample: ims {spec.command} delete {spec.example}"
    delete_all.__doc__ = f"Delete every {spec.noun}.{note}\n\nExample: ims {spec.command} deleteall"
    api_command(spec.app, "delete", output=False)(delete_record)
    api_command(spec.app, "deleteall", output=False)(delete_all)


def add_crud(spec: RecordCommands) -> None:
    add_list(spec)
    add_describe(spec)
    add_deletes(spec)


def link_option(path: str | None, etag: str | None, link_type: str | None) -> dict[str, str] | None:
    """`--link-path/--link-etag/--link-type` into an artifact link (None when no path was given)."""
    if path is None:
        if etag is not None or link_type is not None:
            raise typer.BadParameter("needs --link-path as well", param_hint="--link-etag/--link-type")
        return None
    return {"path": path, "etag": etag or "", "type": link_type or "s3"}
