"""Cached GETs stay right: the same bytes as before (list = the records' GETs joined = the pre-change
serializer, field order included, under '', /v2 and /v3), paging and filters after cache hits, and a write
through one server process, another server, the task worker or straight into the database is seen at once by
every other process, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from tests.support.contract import PREFIXES
from tests.support.s3data import put_image, put_recipe, wait_for
from tests.support.servers import ImsServer, PostgresCluster, start_ims_server

from ims.api.http import FastJSONResponse
from ims.artifacts.s3 import ArtifactStore
from ims.store import repository
from ims.store.db import Database

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS cache@ims"


def database_url(server: ImsServer) -> str:
    return server.env.get("IMS_DATABASE_URL") or f"sqlite:///{server.data_dir / 'ims.sqlite3'}"


def stored_bytes(
    server: ImsServer,
    repo: repository.RecordRepository,
    record_id: str | None = None,
    *,
    deleted: bool = False,
    **fetch: Any,
) -> bytes:
    """What the server sent before responses were cached: the records read from the database, rendered by
    FastJSONResponse."""
    database = Database(database_url(server))
    try:
        with database.read() as conn:
            if record_id is None:
                content: Any = repo.fetch(conn, deleted=deleted, **fetch)
            else:
                content = repo.get(conn, record_id, deleted=deleted)
    finally:
        database.dispose()
    return bytes(FastJSONResponse(content).body)


def post(api: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(path, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def assert_list_is_its_records(api: httpx.Client, path: str, expected: bytes) -> list[dict[str, Any]]:
    listed = api.get(path)
    assert listed.status_code == 200
    assert listed.content == expected
    records = listed.json()
    base = path.split("?")[0]
    singles = [api.get(f"{base}/{record['id']}").content for record in records]
    assert b"[" + b",".join(singles) + b"]" == listed.content
    return list(records)


@pytest.fixture(scope="module")
def server(work_root: Path, s3_env: dict[str, str]) -> Iterator[ImsServer]:
    started = start_ims_server(work_root / f"ims-bytes-{uuid.uuid4().hex[:8]}", s3_env, {"IMS_RUN_WORKERS": "false"})
    yield started
    started.stop()


def test_the_same_bytes_as_before(server: ImsServer, artifact_store: ArtifactStore) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as api:
        key = post(api, "/v3/public-keys", {"name": "ключ ✓", "public_key": KEY})
        post(api, "/public-keys", {"name": 'quote " and \\ backslash', "public_key": KEY})
        post(
            api,
            "/v3/recipes",
            {
                "name": "r1",
                "recipe_type": "kiwi-ng",
                "linux_distribution": "sles15",
                "link": put_recipe(artifact_store).link,
                "template_dictionary": [{"key": "k", "value": "v"}],
                "require_dkms": True,
            },
        )
        post(
            api,
            "/v2/recipes",
            {"name": "r2", "recipe_type": "kiwi-ng", "linux_distribution": "centos7", "link": None, "arch": "aarch64"},
        )
        with_link = post(api, "/v3/images", {"name": "linked", "link": put_image(artifact_store).link})
        post(api, "/v3/images", {"name": "meta", "metadata": {"z": "1", "a": "ü", "n": ""}, "arch": "aarch64"})
        gone = post(api, "/v2/images", {"name": "to be deleted"})
        assert api.delete(f"/v3/images/{gone['id']}").status_code == 204
        assert api.patch(f"/v3/images/{with_link['id']}", json={"name": "renamed"}).status_code == 200
        job = post(
            api,
            "/v3/jobs",
            {
                "job_type": "customize",
                "artifact_id": with_link["id"],
                "public_key_id": key["id"],
                "image_root_archive_name": "x",
            },
        )

        for _ in range(2):  # the first round fills the caches, the second is answered from them
            for prefix in PREFIXES:
                for name, repo in (
                    ("public-keys", repository.public_keys),
                    ("recipes", repository.recipes),
                    ("images", repository.images),
                    ("jobs", repository.jobs),
                ):
                    records = assert_list_is_its_records(api, f"{prefix}/{name}", stored_bytes(server, repo))
                    for record in records:
                        single = api.get(f"{prefix}/{name}/{record['id']}").content
                        assert single == stored_bytes(server, repo, record["id"])
            deleted = assert_list_is_its_records(
                api, "/v3/deleted/images", stored_bytes(server, repository.images, deleted=True)
            )
            assert [record["id"] for record in deleted] == [gone["id"]]
            assert api.get(f"/v3/jobs/{job['id']}").content == stored_bytes(server, repository.jobs, job["id"])


def ids(api: httpx.Client, path: str, **params: Any) -> list[str]:
    response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    return [record["id"] for record in response.json()]


def test_paging_and_filters_after_cache_hits(work_root: Path, s3_env: dict[str, str]) -> None:
    fresh = start_ims_server(work_root / f"ims-paging-{uuid.uuid4().hex[:8]}", s3_env, {"IMS_RUN_WORKERS": "false"})
    try:
        with httpx.Client(base_url=fresh.url, timeout=30) as api:
            made = [post(api, "/v3/images", {"name": f"i{n}"})["id"] for n in range(7)]
            for _ in range(2):
                assert ids(api, "/v3/images") == made
                assert ids(api, "/v3/images", limit=3) == made[:3]
                assert ids(api, "/v3/images", limit=3, offset=3) == made[3:6]
                assert ids(api, "/v3/images", offset=6) == made[6:]
                assert ids(api, "/v3/images", offset=10) == []
            assert api.delete(f"/v3/images/{made[1]}").status_code == 204
            made.append(post(api, "/v3/images", {"name": "late"})["id"])
            live = [made[0], *made[2:]]
            assert ids(api, "/v3/images") == live
            assert ids(api, "/v3/images", limit=3) == live[:3]
            assert ids(api, "/v3/images", limit=3, offset=3) == live[3:6]
            assert ids(api, "/v3/deleted/images", limit=1) == [made[1]]
            assert api.patch(f"/v3/deleted/images/{made[1]}", json={"operation": "undelete"}).status_code == 204
            assert ids(api, "/v3/images", limit=3) == made[:3]
            assert ids(api, "/v3/deleted/images") == []
            bad = api.get("/v3/images", params={"limit": 0})
            assert bad.status_code == 400
    finally:
        fresh.stop()


def assert_sees(api: httpx.Client, path: str, old_tag: str, predicate: Any) -> str:
    """The GET shows the change at once (no waiting): new body, new tag, the old tag no longer 304s."""
    response = api.get(path, headers={"If-None-Match": old_tag})
    assert response.status_code == 200, path
    assert response.headers["etag"] != old_tag
    assert predicate(response.json()), response.text
    return str(response.headers["etag"])


def check_processes_share_one_view(first: ImsServer, second: ImsServer, artifact_store: ArtifactStore) -> None:
    with httpx.Client(base_url=first.url, timeout=30) as one, httpx.Client(base_url=second.url, timeout=30) as two:
        image = post(one, "/v3/images", {"name": "shared"})
        path = f"/v3/images/{image['id']}"
        # Each server process answers some of these: every one of them has filled its caches.
        list_tag = ""
        for _ in range(6):
            list_tag = two.get("/v3/images").headers["etag"]
            record_tag = two.get(path).headers["etag"]
            assert one.get("/v3/images").headers["etag"] == list_tag
        for _ in range(6):
            assert two.get(path, headers={"If-None-Match": record_tag}).status_code == 304

        # Written through one server, seen through the other (both its processes).
        assert one.patch(path, json={"name": "changed"}).status_code == 200
        for _ in range(4):
            record_tag_now = assert_sees(two, path, record_tag, lambda body: body["name"] == "changed")
            list_tag_now = assert_sees(
                two, "/v3/images", list_tag, lambda body: any(r["name"] == "changed" for r in body)
            )
        record_tag, list_tag = record_tag_now, list_tag_now
        created = post(two, "/images", {"name": "from-two"})
        for _ in range(4):
            list_tag_now = assert_sees(
                one, "/v2/images", list_tag, lambda body: created["id"] in {r["id"] for r in body}
            )
        list_tag = list_tag_now

        # Written straight into the database (as an import or a job worker does), seen by both servers.
        database = Database(database_url(first))
        try:
            with database.write() as conn:
                record = repository.images.get(conn, image["id"])
                assert record is not None
                record["name"] = "written-directly"
                repository.images.save(conn, record)
            with database.write() as conn:
                conn.execute(sqlalchemy.text("UPDATE jobs SET heartbeat = NULL"))  # bookkeeping: no change shown
        finally:
            database.dispose()
        for api in (one, two, one, two):
            assert_sees(api, path, record_tag, lambda body: body["name"] == "written-directly")
            assert_sees(api, "/v3/images", list_tag, lambda body: any(r["name"] == "written-directly" for r in body))

        # The task worker's write (a soft-deleted recipe's S3 move), done in the background, shows everywhere.
        recipe = post(
            one,
            "/v3/recipes",
            {
                "name": "moved",
                "recipe_type": "kiwi-ng",
                "linux_distribution": "sles15",
                "link": put_recipe(artifact_store).link,
            },
        )
        deleted_tag = two.get("/v3/deleted/recipes").headers["etag"]
        assert one.delete(f"/v3/recipes/{recipe['id']}").status_code == 204
        database = Database(database_url(first))
        try:

            def moved() -> bool:
                with database.read() as conn:
                    states = (
                        conn.execute(
                            sqlalchemy.text("SELECT state FROM tasks WHERE resource = :r"),
                            {"r": f"recipe:{recipe['id']}"},
                        )
                        .scalars()
                        .all()
                    )
                return bool(states) and all(state == "done" for state in states)

            wait_for(moved, timeout=30, what="the recipe's move")
            with database.read() as conn:
                stored = repository.recipes.get(conn, recipe["id"], deleted=True)
                owners = conn.execute(sqlalchemy.text("SELECT DISTINCT lease_owner FROM tasks")).scalars().all()
        finally:
            database.dispose()
        for api in (one, two, one, two):
            response = api.get(f"/v3/deleted/recipes/{recipe['id']}")
            assert response.json() == stored
            assert api.get("/v3/deleted/recipes", headers={"If-None-Match": deleted_tag}).status_code == 200
        # `first` runs several processes: its one set of background workers lives in the supervising process.
        assert first.process is not None
        assert {owner.split(":")[1] for owner in owners} == {str(first.process.pid)}


@pytest.mark.slow
def test_two_servers_on_one_sqlite_file(work_root: Path, s3_env: dict[str, str], artifact_store: ArtifactStore) -> None:
    data_dir = work_root / f"ims-two-{uuid.uuid4().hex[:8]}"
    first = start_ims_server(data_dir, s3_env, args=["--workers", "2"])
    second = start_ims_server(data_dir, s3_env, {"IMS_RUN_WORKERS": "false"}, args=["--workers", "2"])
    try:
        check_processes_share_one_view(first, second, artifact_store)
    finally:
        second.stop()
        first.stop()


@pytest.mark.slow
@pytest.mark.postgres
def test_two_replicas_on_postgresql(
    work_root: Path, s3_env: dict[str, str], postgres: PostgresCluster, artifact_store: ArtifactStore
) -> None:
    url = postgres.create_database(f"ims_{uuid.uuid4().hex[:12]}")
    first = start_ims_server(
        work_root / f"ims-pg1-{uuid.uuid4().hex[:8]}", s3_env, {"IMS_DATABASE_URL": url}, args=["--workers", "2"]
    )
    second = start_ims_server(
        work_root / f"ims-pg2-{uuid.uuid4().hex[:8]}",
        s3_env,
        {"IMS_DATABASE_URL": url, "IMS_RUN_WORKERS": "false"},
        args=["--workers", "2"],
    )
    try:
        check_processes_share_one_view(first, second, artifact_store)
    finally:
        second.stop()
        first.stop()
