"""`ims data import|export`: the original's eight JSON data files."""

from __future__ import annotations

from pathlib import Path

import typer

from ims.services import datafiles
from ims.services.datafiles import DatabaseUnusable, Report
from ims.settings import load_settings_or_exit

app = typer.Typer(help="Import or export the original IMS data files.", no_args_is_help=True)


def _unusable(exc: DatabaseUnusable) -> typer.Exit:
    typer.echo(f"ims: {exc}", err=True)
    return typer.Exit(2)


def _print(report: Report) -> None:
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    for problem in report.problems:
        typer.echo(f"error: {problem}", err=True)
    for name, count in report.counts.items():
        source = report.sources.get(name)
        typer.echo(f"{name}: {count} record{'s' if count != 1 else ''}" + (f" ({source})" if source else ""))


@app.command("import")
def import_files(
    directory: Path = typer.Argument(..., help="Directory holding the original's data files."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite records whose id is already stored."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check everything, store nothing."),
) -> None:
    """Import the original's data files, keeping ids, timestamps and every field.

    Reads v2_public_keys.json, v3_deleted_public_keys.json, v2.2_recipes.json, v3.2_deleted_recipes.json,
    v2.1_images.json, v3.1_deleted_images.json, v2.4_jobs.json and v2.0_remote_build_nodes.json (older names
    such as v2_recipes.json when the newer one is absent). Nothing is stored unless every record is valid.

    Example: ims data import /var/ims/data
    """
    try:
        report = datafiles.import_files(load_settings_or_exit(), directory, replace=replace, dry_run=dry_run)
    except DatabaseUnusable as exc:
        raise _unusable(exc) from None
    _print(report)
    if report.problems:
        typer.echo(f"ims: nothing imported: {len(report.problems)} problem(s)", err=True)
        raise typer.Exit(1)
    total = sum(report.counts.values())
    typer.echo(f"checked {total} records; nothing stored (--dry-run)" if dry_run else f"imported {total} records")


@app.command("export")
def export_files(
    directory: Path = typer.Argument(..., help="Directory to write the data files to (created if missing)."),
    force: bool = typer.Option(False, "--force", help="Overwrite data files already in the directory."),
    strict: bool = typer.Option(
        False, "--strict", help="Write nothing if any record could not be loaded by the original IMS."
    ),
) -> None:
    """Export every record as the original's eight data files, which the original IMS loads at start.

    Example: ims data export /tmp/ims-data
    """
    try:
        report = datafiles.export_files(load_settings_or_exit(), directory, overwrite=force, strict=strict)
    except DatabaseUnusable as exc:
        raise _unusable(exc) from None
    _print(report)
    if not report.done:
        typer.echo("ims: nothing exported", err=True)
        raise typer.Exit(1)
    if report.problems:
        typer.echo(f"warning: {len(report.problems)} record(s) above would be refused by the original IMS", err=True)
    typer.echo(f"exported {sum(report.counts.values())} records to {directory}")
