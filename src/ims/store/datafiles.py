"""Import and export of the original IMS's eight JSON data files.

Each file is a JSON array of record dumps. Import validates every record the way the original loads its
files (unknown fields dropped, missing fields given the original's load defaults), keeps ids, timestamps and
fields, and writes all records in one transaction or none. Export writes the files in the original's form:
records in creation order (deleted ones in deletion order), timestamps as naive `isoformat()`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, post_load, validate
from sqlalchemy import Connection

from ims.domain import schemas
from ims.domain.jobs import JOB_STATUSES, default_kernel_file_name
from ims.domain.timeutil import format_timestamp, utcnow
from ims.store import repository
from ims.store.db import Database
from ims.store.repository import RecordRepository

# The original's defaults when a stored job lacks them (DEFAULT_IMS_IMAGE_SIZE, DEFAULT_IMS_JOB_MEM_SIZE).
DEFAULT_BUILD_ENV_SIZE = 60
DEFAULT_JOB_MEM_SIZE = 8
ORIGINAL_DISTRIBUTIONS = ("sles12", "sles15", "centos7")


# --- the original's stored-record rules


class _Record:
    id = fields.UUID(required=True)
    created = fields.DateTime(required=True)


class PublicKeyRecord(_Record, schemas.PublicKeyInput):
    pass


class RecipeRecord(_Record, schemas.RecipeInput):
    pass


class _ImageFields(Schema):
    # Not ImageInput: its `{key, value}` rewrite belongs to POST, while a stored map may have a key "key".
    name = fields.Str(required=True, validate=validate.Length(min=1, error="name field must not be blank"))
    link = fields.Nested(schemas.ArtifactLinkSchema, allow_none=True, load_default=None)
    arch = fields.Str(load_default="x86_64", validate=validate.OneOf(schemas.ARCHES))
    metadata = fields.Dict(keys=fields.Str(), values=fields.Str(), load_default=dict)


class ImageRecord(_Record, _ImageFields):
    pass


class _SshEndpoint(Schema):
    host = fields.Str()
    port = fields.Int()


class _SshContainerRecord(Schema):
    class Meta:
        unknown = RAISE
        # Legacy members the original still reads but never writes.
        load_only = ("host", "port")

    name = fields.Str()
    jail = fields.Bool(load_default=False)
    status = fields.Str()
    host = fields.Str()
    port = fields.Int()
    connection_info = fields.Dict(keys=fields.Str(), values=fields.Nested(_SshEndpoint))


_SIZE = validate.Range(min=1, error="build_env_size must be greater than or equal to 1")


class JobRecord(_Record, schemas.JobInput):
    build_env_size = fields.Int(load_default=DEFAULT_BUILD_ENV_SIZE, validate=_SIZE)
    job_mem_size = fields.Int(load_default=DEFAULT_JOB_MEM_SIZE, validate=_SIZE)
    kernel_file_name = fields.Str(load_default="")
    ssh_containers = fields.List(fields.Nested(_SshContainerRecord), allow_none=True, load_default=None)
    status = fields.Str(load_default="creating", validate=validate.OneOf(JOB_STATUSES))
    arch = fields.Str(load_default="x86_64", allow_none=True, validate=validate.OneOf(schemas.ARCHES))
    resultant_image_id = fields.UUID(allow_none=True, load_default=None)
    kubernetes_job = fields.Str(allow_none=True, load_default=None)
    kubernetes_service = fields.Str(allow_none=True, load_default=None)
    kubernetes_configmap = fields.Str(allow_none=True, load_default=None)
    kubernetes_namespace = fields.Str(allow_none=True, load_default="default")
    kubernetes_pvc = fields.Str(allow_none=True, load_default=None)
    kubernetes_secret = fields.Str(allow_none=True, load_default=None)
    remote_build_node = fields.Str(load_default="")
    # Ours: kept when present so our own exports come back whole; the original drops it on load.
    status_reason = fields.Str(allow_none=True)

    @post_load
    def _derived(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        data["arch"] = data.get("arch") or "x86_64"
        # The original would show null here and refuse it on its next start; the arch's kernel is what it meant.
        data["kernel_file_name"] = data.get("kernel_file_name") or default_kernel_file_name(data["arch"])
        return data


class RemoteBuildNodeRecord(schemas.RemoteBuildNodeInput):
    pass


def _deleted(base: type[Schema]) -> type[Schema]:
    return type(f"Deleted{base.__name__}", (base,), {"deleted": fields.DateTime(required=True)})


@dataclass(frozen=True)
class DataFile:
    name: str
    repo: RecordRepository
    schema: type[Schema]
    deleted: bool = False
    # Older names the helm post-upgrade hook copies forward when the new one is absent, newest first.
    legacy: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.repo.key

    @property
    def kind(self) -> str:
        return self.repo.table.name


DATA_FILES = (
    DataFile("v2_public_keys.json", repository.public_keys, PublicKeyRecord),
    DataFile("v3_deleted_public_keys.json", repository.public_keys, _deleted(PublicKeyRecord), True),
    DataFile("v2.2_recipes.json", repository.recipes, RecipeRecord, legacy=("v2.1_recipes.json", "v2_recipes.json")),
    DataFile("v3.2_deleted_recipes.json", repository.recipes, _deleted(RecipeRecord), True,
             ("v3.1_deleted_recipes.json", "v3_deleted_recipes.json")),
    DataFile("v2.1_images.json", repository.images, ImageRecord, legacy=("v2_images.json",)),
    DataFile("v3.1_deleted_images.json", repository.images, _deleted(ImageRecord), True, ("v3_deleted_images.json",)),
    DataFile("v2.4_jobs.json", repository.jobs, JobRecord,
             legacy=("v2.2_jobs.json", "v2.1_jobs.json", "v2_jobs.json")),
    DataFile("v2.0_remote_build_nodes.json", repository.remote_build_nodes, RemoteBuildNodeRecord),
)
FILE_NAMES = tuple(item.name for item in DATA_FILES)


# --- reports


@dataclass(frozen=True)
class Problem:
    file: str
    index: int | None
    record_id: str | None
    errors: Any

    def __str__(self) -> str:
        where = self.file if self.index is None else f"{self.file}[{self.index}]"
        who = f" {self.record_id}" if self.record_id else ""
        detail = self.errors if isinstance(self.errors, str) else json.dumps(self.errors, sort_keys=True)
        return f"{where}{who}: {detail}"


@dataclass
class Report:
    counts: dict[str, int] = field(default_factory=dict)  # data-file name -> records
    sources: dict[str, str] = field(default_factory=dict)  # data-file name -> the file read or written
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    done: bool = False


class _Rollback(Exception):
    pass


# --- import


@dataclass(frozen=True)
class _Loaded:
    spec: DataFile
    source: str  # the file read: the data file's name or an older one
    index: int
    record: dict[str, Any]

    @property
    def record_id(self) -> str:
        return str(self.record[self.spec.key])


def _source(directory: Path, spec: DataFile) -> Path | None:
    for name in (spec.name, *spec.legacy):
        path = directory / name
        if path.is_file():
            return path
    return None


def _raw_id(raw: Any, key: str) -> str | None:
    """The record's id as given, made safe to print: it comes from the file, unchecked."""
    value = raw.get(key) if isinstance(raw, dict) else None
    if not isinstance(value, str):
        return None
    shown = value if value.isprintable() else repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _read_file(path: Path, spec: DataFile, report: Report) -> list[_Loaded]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        report.problems.append(Problem(path.name, None, None, f"not a readable JSON file: {exc}"))
        return []
    if not isinstance(content, list):
        report.problems.append(Problem(path.name, None, None, "not a JSON array of records"))
        return []
    schema = spec.schema()
    loaded: list[_Loaded] = []
    for index, raw in enumerate(content):
        try:
            if not isinstance(raw, dict):
                raise ValidationError({"_schema": ["Invalid input type."]})
            # Dump what was loaded: the stored form is then exactly what the original would write back.
            record: dict[str, Any] = schema.dump(schema.load(raw, unknown=EXCLUDE))
        except ValidationError as exc:
            report.problems.append(Problem(path.name, index, _raw_id(raw, spec.key), exc.messages))
            continue
        loaded.append(_Loaded(spec, path.name, index, record))
    return loaded


def read_directory(directory: Path, report: Report) -> list[_Loaded]:
    """Read and check every data file present (a missing file is an empty table)."""
    if not directory.is_dir():
        report.problems.append(Problem(str(directory), None, None, "not a directory"))
        return []
    records: list[_Loaded] = []
    for spec in DATA_FILES:
        path = _source(directory, spec)
        if path is None:
            report.counts[spec.name] = 0
            continue
        report.sources[spec.name] = path.name
        if path.name != spec.name:
            report.notes.append(f"{spec.name} is absent; read {path.name} in its place")
        found = _read_file(path, spec, report)
        report.counts[spec.name] = len(found)
        records.extend(found)
    return _drop_duplicates(records, report)


def _drop_duplicates(records: list[_Loaded], report: Report) -> list[_Loaded]:
    seen: dict[tuple[str, str], _Loaded] = {}
    kept: list[_Loaded] = []
    for item in records:
        identity = (item.spec.kind, item.record_id)
        earlier = seen.get(identity)
        if earlier is None:
            seen[identity] = item
            kept.append(item)
        elif earlier.spec is not item.spec and not earlier.spec.deleted and item.spec.deleted:
            # The original's collection undelete could stop part-way and leave a record in both tables; the
            # active copy is the one whose artifacts were restored.
            report.notes.append(
                f"{item.source}[{item.index}] {item.record_id} is also active in {earlier.source}; "
                "the active record is kept"
            )
            report.counts[item.spec.name] -= 1
        else:
            report.problems.append(
                Problem(item.source, item.index, item.record_id,
                        f"the id is already used by {earlier.source}[{earlier.index}]")
            )
    return kept


def _store(conn: Connection, items: list[_Loaded], replace: bool, report: Report) -> None:
    started = utcnow()
    for item in items:
        record = dict(item.record)
        if item.spec.repo is repository.remote_build_nodes:
            # Nodes carry no timestamp; spacing them by their position keeps the file's order on export.
            record["created"] = format_timestamp(started + timedelta(microseconds=item.index))
        existing = item.spec.repo.get_any(conn, item.record_id)
        if existing is not None:
            if not replace:
                report.problems.append(Problem(item.source, item.index, item.record_id,
                                               "a record with this id is already in the database"))
                continue
            item.spec.repo.remove(conn, item.record_id)
        item.spec.repo.insert(conn, record)


def import_directory(database: Database, directory: Path, *, replace: bool = False, dry_run: bool = False) -> Report:
    """Import every record or none: any problem leaves the database as it was."""
    report = Report()
    items = read_directory(directory, report)
    if report.problems:
        return report
    try:
        with database.write() as conn:
            _store(conn, items, replace, report)
            if report.problems or dry_run:
                raise _Rollback()
    except _Rollback:
        return report
    report.done = True
    return report


# --- export


def _export_records(conn: Connection, spec: DataFile) -> list[dict[str, Any]]:
    records = spec.repo.fetch(conn, deleted=spec.deleted)
    if spec.deleted:
        records.sort(key=lambda record: record["deleted"])  # stable: creation order among equal times
    return records


def _original_refusal(spec: DataFile, record: dict[str, Any]) -> Any:
    """Why the original would refuse to load this record, or None."""
    if spec.repo is repository.recipes and record.get("linux_distribution") not in ORIGINAL_DISTRIBUTIONS:
        return {"linux_distribution": [f"{record.get('linux_distribution')!r} is not known to the original"]}
    return None


def _dump(spec: DataFile, record: dict[str, Any], index: int, report: Report) -> dict[str, Any]:
    schema = spec.schema()
    try:
        dumped: dict[str, Any] = schema.dump(schema.load(record, unknown=EXCLUDE))
    except ValidationError as exc:
        report.problems.append(Problem(spec.name, index, _raw_id(record, spec.key), exc.messages))
        return record
    refusal = _original_refusal(spec, dumped)
    if refusal is not None:
        report.problems.append(Problem(spec.name, index, _raw_id(record, spec.key), refusal))
    return dumped


def _write_atomically(path: Path, content: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def export_directory(
    database: Database, directory: Path, *, overwrite: bool = False, strict: bool = False
) -> Report:
    """Write the eight files. Records the original would refuse are reported; `strict` then writes nothing."""
    report = Report()
    if directory.exists() and not directory.is_dir():
        report.problems.append(Problem(str(directory), None, None, "not a directory"))
        return report
    present = [name for name in FILE_NAMES if (directory / name).exists()]
    if present and not overwrite:
        report.problems.append(Problem(str(directory), None, None, f"already holds {', '.join(present)}"))
        return report
    contents: dict[str, list[dict[str, Any]]] = {}
    with database.read() as conn:
        for spec in DATA_FILES:
            contents[spec.name] = [_dump(spec, r, i, report) for i, r in enumerate(_export_records(conn, spec))]
    if report.problems and strict:
        return report
    directory.mkdir(parents=True, exist_ok=True)
    for name, records in contents.items():
        _write_atomically(directory / name, json.dumps(records))
        report.counts[name] = len(records)
        report.sources[name] = str(directory / name)
    report.done = True
    return report

