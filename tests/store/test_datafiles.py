"""Import and export of the original's eight data files, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.store.conftest import BACKENDS
from tests.support import original_data as data

from ims.store import repository, tables
from ims.store.datafiles import FILE_NAMES, export_directory, import_directory
from ims.store.db import Database

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


def counts(database: Database) -> dict[str, int]:
    with database.read() as conn:
        return {
            repo.table.name: len(repo.fetch(conn)) + len(repo.fetch(conn, deleted=True))
            for repo in (repository.public_keys, repository.recipes, repository.images, repository.jobs,
                         repository.remote_build_nodes)
        }


EMPTY = {"public_keys": 0, "recipes": 0, "images": 0, "jobs": 0, "remote_build_nodes": 0}


def test_round_trip_is_identical(database: Database, tmp_path: Path) -> None:
    source = data.write_files(tmp_path / "in")
    report = import_directory(database, source)
    assert report.done and not report.problems
    assert report.counts == {name: len(records) for name, records in data.all_files().items()}

    exported = export_directory(database, tmp_path / "out")
    assert exported.done and not exported.problems
    # Same records, same order, same values (dict comparison ignores key order only).
    assert data.read_files(tmp_path / "out") == data.read_files(source)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(FILE_NAMES)


def test_export_keeps_the_original_key_order(database: Database, tmp_path: Path) -> None:
    import_directory(database, data.write_files(tmp_path / "in"))
    export_directory(database, tmp_path / "out")
    recipe = json.loads((tmp_path / "out" / "v2.2_recipes.json").read_text())[0]
    assert list(recipe)[-2:] == ["id", "created"]
    deleted = json.loads((tmp_path / "out" / "v3.1_deleted_images.json").read_text())[0]
    assert list(deleted)[-3:] == ["id", "created", "deleted"]


def test_records_are_stored_as_the_api_shows_them(database: Database, tmp_path: Path) -> None:
    import_directory(database, data.write_files(tmp_path / "in"))
    with database.read() as conn:
        assert repository.public_keys.get(conn, data.KEY_A) == data.public_keys()[0]
        assert repository.images.get(conn, data.IMAGE_DELETED, deleted=True) == data.deleted_images()[0]
        assert repository.recipes.get(conn, data.RECIPE_DELETED) is None
        assert repository.jobs.get(conn, data.JOB_CUSTOMIZE) == data.jobs()[1]
        row = conn.execute(select(tables.jobs.c.status, tables.jobs.c.job_type, tables.jobs.c.phase)
                           .where(tables.jobs.c.id == data.JOB_CUSTOMIZE)).one()
        link_path = conn.execute(select(tables.images.c.link_path).where(tables.images.c.id == data.IMAGE_A))
    # Imported jobs are history: never launched again.
    assert tuple(row) == ("waiting_on_user", "customize", "done")
    assert link_path.scalar_one() == data.images()[0]["link"]["path"]


def test_missing_fields_take_the_original_defaults(database: Database, tmp_path: Path) -> None:
    recipe = {k: v for k, v in data.recipes()[0].items() if k not in ("arch", "require_dkms", "template_dictionary")}
    image = {k: v for k, v in data.images()[0].items() if k not in ("arch", "metadata")}
    job = {k: v for k, v in data.jobs()[0].items()
           if k not in ("kubernetes_namespace", "remote_build_node", "arch", "require_dkms", "kubernetes_pvc",
                        "job_mem_size", "kubernetes_secret", "kernel_file_name", "build_env_size", "status")}
    # Fields the original no longer knows (or a newer one added) are dropped, as its loader does.
    image["platform"] = "x86_64"
    data.write_files(tmp_path / "in", {"v2.2_recipes.json": [recipe], "v2.1_images.json": [image],
                                       "v2.4_jobs.json": [job]})
    assert import_directory(database, tmp_path / "in").done
    with database.read() as conn:
        stored_recipe = repository.recipes.get(conn, data.RECIPE_A)
        stored_image = repository.images.get(conn, data.IMAGE_A)
        stored_job = repository.jobs.get(conn, data.JOB_CREATE)
    assert stored_recipe is not None and stored_image is not None and stored_job is not None
    assert (stored_recipe["arch"], stored_recipe["require_dkms"], stored_recipe["template_dictionary"]) == (
        "x86_64", True, [])
    assert (stored_image["arch"], stored_image["metadata"]) == ("x86_64", {})
    assert "platform" not in stored_image
    assert {k: stored_job[k] for k in ("kubernetes_namespace", "remote_build_node", "arch", "require_dkms",
                                       "kubernetes_pvc", "kubernetes_secret", "job_mem_size", "build_env_size",
                                       "kernel_file_name", "status")} == {
        "kubernetes_namespace": "default", "remote_build_node": "", "arch": "x86_64", "require_dkms": True,
        "kubernetes_pvc": None, "kubernetes_secret": None, "job_mem_size": 8, "build_env_size": 60,
        "kernel_file_name": "vmlinuz", "status": "creating"}


def test_bad_records_are_all_reported_and_nothing_is_imported(database: Database, tmp_path: Path) -> None:
    files = data.all_files()
    files["v2.1_images.json"][1]["arch"] = "sparc"
    files["v2.4_jobs.json"][0]["kernel_file_name"] = None  # the original's own start-up fails on this
    files["v2.2_recipes.json"][0]["link"] = {"path": "s3://ims/x", "type": "S3"}
    files["v2_public_keys.json"].append({"name": "no id", "public_key": "k", "created": "2024-01-01T00:00:00"})
    files["v3_deleted_public_keys.json"][0]["deleted"] = "yesterday"
    files["v2.0_remote_build_nodes.json"].append("x3000c0s9b0n0")
    report = import_directory(database, data.write_files(tmp_path / "in", files))
    assert not report.done
    found = {(p.file, p.index, p.record_id): p.errors for p in report.problems}
    assert found == {
        ("v2.1_images.json", 1, data.IMAGE_B): {"arch": ["Must be one of: aarch64, x86_64."]},
        ("v2.4_jobs.json", 0, data.JOB_CREATE): {"kernel_file_name": ["Field may not be null."]},
        ("v2.2_recipes.json", 0, data.RECIPE_A): {"link": {"type": ["Type must be one of: s3."]}},
        ("v2_public_keys.json", 2, None): {"id": ["Missing data for required field."]},
        ("v3_deleted_public_keys.json", 0, data.KEY_DELETED): {"deleted": ["Not a valid datetime."]},
        ("v2.0_remote_build_nodes.json", 2, None): {"_schema": ["Invalid input type."]},
    }
    assert f'v2.1_images.json[1] {data.IMAGE_B}: {{"arch": ["Must be one of: aarch64, x86_64."]}}' in map(
        str, report.problems)
    assert counts(database) == EMPTY


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not a readable JSON file"), ('{"id": "x"}', "not a JSON array of records")],
)
def test_unreadable_files(database: Database, tmp_path: Path, content: str, message: str) -> None:
    directory = data.write_files(tmp_path / "in")
    (directory / "v2.1_images.json").write_text(content)
    report = import_directory(database, directory)
    assert [(p.file, p.index) for p in report.problems] == [("v2.1_images.json", None)]
    assert message in str(report.problems[0])
    assert counts(database) == EMPTY


def test_existing_ids_are_reported_unless_replaced(database: Database, tmp_path: Path) -> None:
    directory = data.write_files(tmp_path / "in")
    assert import_directory(database, directory).done
    with database.write() as conn:
        renamed = dict(data.public_keys()[0], name="changed here")
        repository.public_keys.save(conn, renamed)
        extra = {"name": "mine", "public_key": "k", "id": "11111111-2222-4333-8444-555555555555",
                 "created": "2025-01-01T00:00:00"}
        repository.public_keys.insert(conn, extra)

    again = import_directory(database, directory)
    assert not again.done
    assert len(again.problems) == sum(len(records) for records in data.all_files().values())
    assert all("already in the database" in str(p) for p in again.problems)
    with database.read() as conn:
        assert repository.public_keys.get(conn, data.KEY_A) == renamed

    replaced = import_directory(database, directory, replace=True)
    assert replaced.done and not replaced.problems
    with database.read() as conn:
        assert repository.public_keys.get(conn, data.KEY_A) == data.public_keys()[0]
        # --replace overwrites what the files hold and leaves everything else alone.
        assert repository.public_keys.get(conn, extra["id"]) == extra


def test_dry_run_stores_nothing(database: Database, tmp_path: Path) -> None:
    report = import_directory(database, data.write_files(tmp_path / "in"), dry_run=True)
    assert not report.done and not report.problems
    assert report.counts["v2.4_jobs.json"] == 2
    assert counts(database) == EMPTY


def test_older_file_names(database: Database, tmp_path: Path) -> None:
    files = data.all_files()
    old = {
        "v2_recipes.json": files.pop("v2.2_recipes.json"),
        "v3_deleted_recipes.json": files.pop("v3.2_deleted_recipes.json"),
        "v2_images.json": files.pop("v2.1_images.json"),
        "v3_deleted_images.json": files.pop("v3.1_deleted_images.json"),
        "v2.1_jobs.json": files.pop("v2.4_jobs.json"),
        # Older than v2.1_jobs.json, so it must not be preferred.
        "v2_jobs.json": [{"bogus": True}],
    }
    directory = data.write_files(tmp_path / "in", {**files, **old})
    report = import_directory(database, directory)
    assert report.done, report.problems
    assert report.sources["v2.2_recipes.json"] == "v2_recipes.json"
    assert report.sources["v2.4_jobs.json"] == "v2.1_jobs.json"
    assert any("v2.1_images.json is absent; read v2_images.json" in note for note in report.notes)
    assert counts(database) == {"public_keys": 3, "recipes": 3, "images": 3, "jobs": 2, "remote_build_nodes": 2}


def test_a_newer_name_wins_over_an_older_one(database: Database, tmp_path: Path) -> None:
    directory = data.write_files(tmp_path / "in")
    (directory / "v2_recipes.json").write_text("not even json")
    assert import_directory(database, directory).done


def test_a_record_left_in_both_tables_keeps_the_active_copy(database: Database, tmp_path: Path) -> None:
    """The original's collection undelete could stop part-way and leave a record in both files."""
    files = data.all_files()
    files["v3.2_deleted_recipes.json"].append(dict(files["v2.2_recipes.json"][0], deleted="2024-04-04T04:04:04"))
    report = import_directory(database, data.write_files(tmp_path / "in", files))
    assert report.done
    assert any(data.RECIPE_A in note and "active record is kept" in note for note in report.notes)
    with database.read() as conn:
        assert repository.recipes.get(conn, data.RECIPE_A) == data.recipes()[0]


def test_a_repeated_id_in_one_file_is_an_error(database: Database, tmp_path: Path) -> None:
    files = data.all_files()
    files["v2_public_keys.json"].append(dict(files["v2_public_keys.json"][0], name="twin"))
    report = import_directory(database, data.write_files(tmp_path / "in", files))
    assert [(p.file, p.index, p.record_id) for p in report.problems] == [("v2_public_keys.json", 2, data.KEY_A)]
    assert counts(database) == EMPTY


def test_missing_directory(database: Database, tmp_path: Path) -> None:
    report = import_directory(database, tmp_path / "nowhere")
    assert not report.done and "not a directory" in str(report.problems[0])


def test_export_of_an_empty_database(database: Database, tmp_path: Path) -> None:
    report = export_directory(database, tmp_path / "out")
    assert report.done
    assert data.read_files(tmp_path / "out") == {name: [] for name in FILE_NAMES}


def test_export_does_not_overwrite_unless_asked(database: Database, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert export_directory(database, out).done
    (out / "v2_public_keys.json").write_text("[\"keep me\"]")
    refused = export_directory(database, out)
    assert not refused.done and "already holds" in str(refused.problems[0])
    assert (out / "v2_public_keys.json").read_text() == "[\"keep me\"]"
    assert export_directory(database, out, overwrite=True).done
    assert json.loads((out / "v2_public_keys.json").read_text()) == []


def test_export_reports_what_the_original_would_refuse(database: Database, tmp_path: Path) -> None:
    ours: dict[str, Any] = dict(data.recipes()[1], id="77777777-0000-4000-8000-000000000001",
                                linux_distribution="debian12")
    with database.write() as conn:
        repository.recipes.insert(conn, ours)
    strict = export_directory(database, tmp_path / "strict", strict=True)
    assert not strict.done and not (tmp_path / "strict").exists()
    assert [(p.file, p.record_id) for p in strict.problems] == [("v2.2_recipes.json", ours["id"])]
    relaxed = export_directory(database, tmp_path / "relaxed")
    assert relaxed.done and len(relaxed.problems) == 1
    assert json.loads((tmp_path / "relaxed" / "v2.2_recipes.json").read_text()) == [ours]


def test_deleted_records_export_in_deletion_order(database: Database, tmp_path: Path) -> None:
    first = dict(data.deleted_public_keys()[0])
    second = dict(first, id="2d1d9b47-5a3c-4bb1-9d6e-0c53a2f0a009", created="2020-01-01T00:00:00",
                  deleted="2024-09-09T09:09:09")
    data.write_files(tmp_path / "in", {"v3_deleted_public_keys.json": [first, second]})
    import_directory(database, tmp_path / "in")
    export_directory(database, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "v3_deleted_public_keys.json").read_text()) == [first, second]
