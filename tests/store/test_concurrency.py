"""Several `ims serve` processes on one database, hammered at once: nothing lost, nothing half-done, no 500.

SQLite: two servers of 3 worker processes each on one data directory (one WAL file).
PostgreSQL: two servers of 3 worker processes each on one database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.s3data import put_recipe
from tests.support.servers import ImsServer, PostgresCluster, start_ims_server

from ims.artifacts.s3 import ArtifactStore

pytestmark = pytest.mark.slow

CLIENTS = 24
WORKERS = ["--workers", "3"]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def servers(request: pytest.FixtureRequest, work_root: Path, s3_env: dict[str, str]) -> Iterator[list[str]]:
    name = f"concurrency-{request.param}-{uuid.uuid4().hex[:6]}"
    extra: dict[str, str] = {}
    if request.param == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        extra["IMS_DATABASE_URL"] = cluster.create_database(name.replace("-", "_"))
    started: list[ImsServer] = []
    try:
        for _ in range(2):
            started.append(start_ims_server(work_root / name, s3_env, extra, args=WORKERS))
        yield [server.url for server in started]
    finally:
        for server in started:
            server.stop()
    for server in started:
        assert "Traceback" not in server.log(), server.log()


async def _fan_out(urls: list[str], calls: list[tuple[str, str, Any]]) -> list[httpx.Response]:
    """Run the calls over CLIENTS concurrent connections, alternating between the servers."""
    limit = asyncio.Semaphore(CLIENTS)
    clients = [httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=CLIENTS))
               for url in urls]

    async def one(index: int, method: str, path: str, body: Any) -> httpx.Response:
        async with limit:
            return await clients[index % len(clients)].request(method, path, json=body)

    try:
        return list(await asyncio.gather(*(one(i, *call) for i, call in enumerate(calls))))
    finally:
        for client in clients:
            await client.aclose()


def _run(urls: list[str], calls: list[tuple[str, str, Any]]) -> list[httpx.Response]:
    replies = asyncio.run(_fan_out(urls, calls))
    errors = [(r.request.method, r.request.url.path, r.status_code, r.text[:300]) for r in replies
              if r.status_code >= 500]
    assert errors == []
    return replies


def test_every_created_record_is_stored(servers: list[str]) -> None:
    calls: list[tuple[str, str, Any]] = []
    for n in range(120):
        calls.append(("POST", "/v3/images", {"name": f"img-{n}", "metadata": {"n": str(n)}}))
        calls.append(("POST", "/public-keys", {"name": f"key-{n}", "public_key": f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMUuqfTnb9KWoiKZELqkQtAKLjjI06QYT32u3Bge1tkr key-{n}"}))
    replies = _run(servers, calls)
    assert Counter(r.status_code for r in replies) == {201: len(calls)}
    created = {r.json()["id"]: r.json() for r in replies}
    assert len(created) == len(calls)
    with httpx.Client(base_url=servers[-1], timeout=60) as api:
        stored = {r["id"]: r for r in api.get("/v3/images").json() + api.get("/v3/public-keys").json()}
    for record_id, record in created.items():
        assert stored.get(record_id) == record


def test_no_patch_is_lost(servers: list[str]) -> None:
    with httpx.Client(base_url=servers[0], timeout=60) as api:
        image = api.post("/v3/images", json={"name": "target", "metadata": {"keep": "me", "drop": "x"}}).json()
    path = f"/v3/images/{image['id']}"
    calls: list[tuple[str, str, Any]] = [
        ("PATCH", path, {"metadata": {"operation": "set", "key": f"k{n}", "value": str(n)}}) for n in range(200)
    ]
    calls.insert(100, ("PATCH", path, {"metadata": {"operation": "remove", "key": "drop"}}))
    calls.insert(50, ("PATCH", path, {"arch": "aarch64"}))
    replies = _run(servers, calls)
    assert Counter(r.status_code for r in replies) == {200: len(calls)}
    with httpx.Client(base_url=servers[1], timeout=60) as api:
        final = api.get(path).json()
    expected = {"keep": "me", **{f"k{n}": str(n) for n in range(200)}}
    assert final["metadata"] == expected
    assert final["arch"] == "aarch64"


def test_deletes_patches_and_creates_interleave_cleanly(servers: list[str]) -> None:
    with httpx.Client(base_url=servers[0], timeout=60) as api:
        victims = [api.post("/v3/images", json={"name": f"victim-{n}"}).json()["id"] for n in range(40)]
    calls: list[tuple[str, str, Any]] = []
    for n, victim in enumerate(victims):
        calls.append(("PATCH", f"/v3/images/{victim}", {"metadata": {"operation": "set", "key": "a", "value": "1"}}))
        calls.append(("DELETE", f"/v3/images/{victim}", None))
        calls.append(("DELETE", f"/v3/images/{victim}", None))  # the second delete of a record finds nothing
        calls.append(("PATCH", f"/v3/images/{victim}", {"metadata": {"operation": "set", "key": "b", "value": "2"}}))
        calls.append(("POST", "/v3/images", {"name": f"newcomer-{n}"}))
    replies = _run(servers, calls)
    by_call: dict[tuple[str, str], list[int]] = {}
    for reply in replies:
        by_call.setdefault((reply.request.method, reply.request.url.path), []).append(reply.status_code)
    for victim in victims:
        assert sorted(by_call[("DELETE", f"/v3/images/{victim}")]) == [204, 404]
        assert set(by_call[("PATCH", f"/v3/images/{victim}")]) <= {200, 404}
    newcomers = [r.json()["id"] for r in replies if r.status_code == 201]
    assert len(newcomers) == len(victims)

    with httpx.Client(base_url=servers[1], timeout=60) as api:
        active = {r["id"] for r in api.get("/v3/images").json()}
        deleted = {r["id"]: r for r in api.get("/v3/deleted/images").json()}
    assert set(victims) <= set(deleted) and not set(victims) & active
    assert set(newcomers) <= active
    for victim in victims:
        # A patch either landed before the delete (and is kept in the deleted record) or found nothing.
        patched_after = [code for code in by_call[("PATCH", f"/v3/images/{victim}")] if code == 200]
        assert len(deleted[victim]["metadata"]) == len(patched_after)


def test_one_link_goes_to_one_record(servers: list[str], artifact_store: ArtifactStore) -> None:
    recipe = put_recipe(artifact_store)
    body = {"name": "twin", "recipe_type": "kiwi-ng", "linux_distribution": "sles15", "link": recipe.link}
    replies = _run(servers, [("POST", "/v3/recipes", body)] * 30)
    assert Counter(r.status_code for r in replies) == {201: 1, 422: 29}
    (created,) = [r.json()["id"] for r in replies if r.status_code == 201]
    with httpx.Client(base_url=servers[0], timeout=60) as api:
        users = [r["id"] for r in api.get("/v3/recipes").json() if r["link"] and r["link"]["path"] == recipe.link["path"]]
    assert users == [created]
