"""The store and the task queue, the same tests on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select
from tests.store.conftest import BACKENDS

from ims.domain.timeutil import format_timestamp
from ims.store import migrate, repository, tables
from ims.store.db import Database
from ims.tasks.queue import MAX_ATTEMPTS, TaskQueue, enqueue, has_unfinished

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

ROOT = Path(__file__).resolve().parents[2]


def _image(name: str = "img", *, created: str = "2025-01-02T03:04:05.123456", link: str | None = None) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "created": created,
        "name": name,
        "link": {"path": link, "etag": "e", "type": "s3"} if link else None,
        "arch": "x86_64",
        "metadata": {"ünïcode": "välue", "k": ""},
    }


def _head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(migrate.alembic_config(url)).get_current_head()


# --- migrations


def test_migrations_create_every_table_at_head(database: Database) -> None:
    names = set(inspect(database.engine).get_table_names())
    assert {"public_keys", "recipes", "images", "jobs", "remote_build_nodes", "tasks"} <= names
    with database.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == _head_revision(database.url)


def test_migrating_again_changes_nothing(database: Database) -> None:
    with database.write() as conn:
        repository.images.insert(conn, _image())
    migrate.upgrade(database)
    with database.read() as conn:
        assert repository.images.count(conn) == 1


def test_replicas_starting_together_migrate_once(database_url: str, open_database: Callable[[], Database]) -> None:
    script = "import sys; from ims.store import migrate; from ims.store.db import Database; " \
             "migrate.upgrade(Database(sys.argv[1]))"
    processes = [
        subprocess.Popen([sys.executable, "-c", script, database_url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    failures = [err for process in processes if (err := process.communicate(timeout=120)[1]) and process.returncode]
    assert failures == []
    database = open_database()
    with database.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == _head_revision(database_url)


# --- records


def test_insert_get_fetch_save_remove(database: Database) -> None:
    first = _image("first", created="2025-01-02T03:04:05")
    second = _image("second", created="2025-01-02T03:04:05.000001", link="s3://boot-images/x/manifest.json")
    with database.write() as conn:
        repository.images.insert(conn, second)
        repository.images.insert(conn, first)
    with database.read() as conn:
        assert repository.images.get(conn, first["id"]) == first
        assert repository.images.get(conn, second["id"]) == second
        assert repository.images.fetch(conn) == [first, second]  # oldest first
        assert repository.images.fetch(conn, limit=1, offset=1) == [second]
        assert repository.images.count(conn) == 2
        assert repository.images.get(conn, "no-such-id") is None

    changed = {**first, "name": "renamed", "metadata": {"a": "b"}}
    with database.write() as conn:
        repository.images.save(conn, changed)
        repository.images.remove(conn, second["id"])
    with database.read() as conn:
        assert repository.images.fetch(conn) == [changed]
        assert repository.images.get_any(conn, second["id"]) is None


def test_a_failed_transaction_leaves_nothing(database: Database) -> None:
    record = _image()
    with pytest.raises(RuntimeError), database.write() as conn:
        repository.images.insert(conn, record)
        raise RuntimeError("half-way")
    with database.read() as conn:
        assert repository.images.get_any(conn, record["id"]) is None


def test_timestamps_keep_the_original_format(database: Database) -> None:
    record = _image(created=format_timestamp(datetime(2025, 6, 7, 8, 9, 10)))
    with database.write() as conn:
        repository.images.insert(conn, record)
    with database.read() as conn:
        assert repository.images.get(conn, record["id"])["created"] == "2025-06-07T08:09:10"  # type: ignore[index]


def test_jobs_and_nodes_keep_their_query_columns(database: Database) -> None:
    job = {"id": str(uuid.uuid4()), "created": "2025-01-01T00:00:00", "status": "building_image",
           "job_type": "create", "artifact_id": "a"}
    node = {"xname": "x3000c0s1b0n0", "created": "2025-01-01T00:00:00"}
    with database.write() as conn:
        repository.jobs.insert(conn, job)
        repository.remote_build_nodes.insert(conn, node)
    with database.read() as conn:
        assert repository.jobs.get(conn, job["id"]) == job
        row = conn.execute(select(tables.jobs.c.status, tables.jobs.c.job_type)).one()
        assert (row.status, row.job_type) == ("building_image", "create")
        assert repository.remote_build_nodes.get(conn, "x3000c0s1b0n0") == node


def test_soft_deleted_records_are_seen_only_as_deleted(database: Database) -> None:
    kept, gone = _image("kept"), _image("gone")
    with database.write() as conn:
        repository.images.insert(conn, kept)
        repository.images.insert(conn, gone)
        repository.images.save(conn, {**gone, "deleted": "2025-02-03T04:05:06.7"})
    with database.read() as conn:
        assert repository.images.get(conn, gone["id"]) is None
        deleted = repository.images.get(conn, gone["id"], deleted=True)
        assert deleted is not None and deleted["deleted"] == "2025-02-03T04:05:06.700000"
        assert repository.images.get(conn, kept["id"], deleted=True) is None
        assert [r["id"] for r in repository.images.fetch(conn)] == [kept["id"]]
        assert [r["id"] for r in repository.images.fetch(conn, deleted=True)] == [gone["id"]]
        assert repository.images.ids(conn) == [kept["id"]]
        assert repository.images.ids(conn, deleted=True) == [gone["id"]]
        assert (repository.images.count(conn), repository.images.count(conn, deleted=True)) == (1, 1)
        assert repository.images.get_any(conn, gone["id"]) == deleted
    restored = dict(deleted)
    restored.pop("deleted")
    with database.write() as conn:
        repository.images.save(conn, restored)
    with database.read() as conn:
        assert repository.images.get(conn, gone["id"]) == gone


def test_link_users_are_found_among_active_records_only(database: Database) -> None:
    path = "s3://boot-images/abc/manifest.json"
    active, deleted = _image(link=path), _image(link=path)
    with database.write() as conn:
        repository.images.insert(conn, active)
        repository.images.insert(conn, {**deleted, "deleted": "2025-01-01T00:00:00"})
        repository.images.set_columns(conn, deleted["id"], restore_link={"path": path, "type": "s3"})
    with database.read() as conn:
        assert repository.images.find_link_user(conn, path) == active["id"]
        assert repository.images.find_link_user(conn, path, exclude_id=active["id"]) is None
        assert repository.images.find_link_user(conn, "s3://boot-images/other") is None
        assert repository.recipes.find_link_user(conn, path) is None
        assert repository.images.restore_link(conn, deleted["id"]) == {"path": path, "type": "s3"}
        assert repository.images.restore_link(conn, active["id"]) is None


# --- task queue


def _enqueue(database: Database, *items: tuple[str, str]) -> list[int]:
    with database.write() as conn:
        return [enqueue(conn, kind, resource, {"n": index}) for index, (kind, resource) in enumerate(items)]


def test_tasks_on_one_resource_run_in_order(database: Database) -> None:
    queue = TaskQueue(database)
    first, second, other = _enqueue(database, ("move", "image:a"), ("delete", "image:a"), ("move", "image:b"))
    claimed = queue.claim("w1", 30)
    assert claimed is not None and (claimed.id, claimed.kind, claimed.payload, claimed.attempts) == (
        first, "move", {"n": 0}, 1)
    blocked_one_claims_other = queue.claim("w2", 30)
    assert blocked_one_claims_other is not None and blocked_one_claims_other.id == other
    assert queue.claim("w2", 30) is None  # `second` waits for `first`
    with database.read() as conn:
        assert has_unfinished(conn, "image:a")
    queue.complete(first, "w1")
    following = queue.claim("w2", 30)
    assert following is not None and following.id == second
    queue.complete(second, "w2")
    queue.complete(other, "w2")
    with database.read() as conn:
        assert not has_unfinished(conn, "image:a")
    assert queue.summary() == {"done": 3}
    assert queue.pending_count() == 0


def test_a_lapsed_lease_frees_the_task_and_the_old_owner_loses_it(database: Database) -> None:
    queue = TaskQueue(database)
    (task_id,) = _enqueue(database, ("move", "recipe:r"))
    assert queue.claim("crashed", 0.3) is not None
    assert queue.claim("other", 30) is None
    time.sleep(0.5)
    taken = queue.claim("other", 30)
    assert taken is not None and taken.id == task_id and taken.attempts == 2
    assert not queue.extend(task_id, "crashed", 30)
    queue.complete(task_id, "crashed")  # too late: not its task any more
    assert queue.summary() == {"running": 1}
    assert queue.extend(task_id, "other", 30)
    queue.complete(task_id, "other")
    assert queue.summary() == {"done": 1}


def test_a_failed_task_is_retried_later_then_given_up(database: Database) -> None:
    queue = TaskQueue(database)
    (task_id,) = _enqueue(database, ("move", "image:f"))
    for attempt in range(1, MAX_ATTEMPTS):
        task = None
        deadline = time.monotonic() + 5
        while task is None and time.monotonic() < deadline:
            task = queue.claim("w", 30)
            time.sleep(0.02)
        assert task is not None and task.attempts == attempt
        queue.fail(task_id, "w", "boom", task.attempts, retry_in=0.05)
        assert queue.claim("w", 30) is None  # not before the retry delay
    time.sleep(0.05 * MAX_ATTEMPTS + 0.1)
    last = queue.claim("w", 30)
    assert last is not None and last.attempts == MAX_ATTEMPTS
    queue.fail(task_id, "w", "boom again", last.attempts)
    assert queue.summary() == {"failed": 1}
    with database.read() as conn:
        assert not has_unfinished(conn, "image:f")
        row = conn.execute(select(tables.tasks.c.last_error)).one()
    assert row.last_error == "boom again"
    assert queue.claim("w", 30) is None


@pytest.mark.slow
def test_processes_claiming_together_never_run_a_task_twice(database: Database, tmp_path: Path) -> None:
    resources = [f"image:{n}" for n in range(10)]
    ids = _enqueue(database, *[("move", resources[n % len(resources)]) for n in range(150)])
    outputs = [tmp_path / f"claimer-{n}.txt" for n in range(4)]
    processes = [
        subprocess.Popen([sys.executable, "-m", "tests.store.claimer", database.url, str(out)], cwd=ROOT)
        for out in outputs
    ]
    for process in processes:
        assert process.wait(300) == 0

    runs = [line.split() for out in outputs for line in out.read_text().splitlines()]
    claimed = sorted(int(run[0]) for run in runs)
    assert claimed == sorted(ids), "every task ran exactly once"
    assert len({run[4] for run in runs}) > 1, "the work was shared"
    by_resource: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for task_id, resource, start, end, _owner in runs:
        by_resource[resource].append((int(task_id), int(start), int(end)))
    for resource, resource_runs in by_resource.items():
        resource_runs.sort()
        for (_, _, earlier_end), (_, later_start, _) in zip(resource_runs, resource_runs[1:], strict=False):
            assert later_start >= earlier_end, f"tasks on {resource} overlapped or ran out of order"
    assert TaskQueue(database).summary() == {"done": len(ids)}
