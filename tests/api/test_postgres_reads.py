"""Cached GETs on PostgreSQL: the collection version is read on the event loop's own connection (ims.store.versions),
fresh on every GET. A write through another server process shows at once; a database that is down answers 503
with the API's problem body, never 500 nor a cached body; a dropped or restarted database is used again as soon
as it is back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from tests.support.servers import PG_BIN, ImsServer, PostgresCluster, start_ims_server

from ims.store.versions import libpq_conninfo

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS pgreads@ims"
PATHS = ["/v3/images", "/images", "/v3/jobs", "/v3/public-keys", "/v3/recipes"]


def test_conninfo_of_sqlalchemy_urls() -> None:
    info = libpq_conninfo("postgresql+psycopg://ims:p%40ss%20w'rd@db.example:6432/ims?sslmode=require")
    assert info is not None
    assert conninfo_to_dict(info) == {
        "host": "db.example",
        "port": "6432",
        "user": "ims",
        "password": "p@ss w'rd",
        "dbname": "ims",
        "sslmode": "require",
    }
    socket = libpq_conninfo("postgresql+psycopg://ims@/ims?host=/run/postgresql")
    assert socket is not None and conninfo_to_dict(socket) == {"host": "/run/postgresql", "user": "ims", "dbname": "ims"}
    several = libpq_conninfo("postgresql+psycopg://ims@/ims?host=a:5432&host=b:5433")
    assert several is not None and conninfo_to_dict(several)["host"] == "a,b"
    assert conninfo_to_dict(several)["port"] == "5432,5433"
    # psycopg2's URL spelling gives the same libpq parameters.
    assert libpq_conninfo("postgresql://ims@h/ims") == libpq_conninfo("postgresql+psycopg://ims@h/ims")
    # Not libpq: the reads stay on the thread pool.
    assert libpq_conninfo("sqlite:////tmp/ims.sqlite3") is None
    assert libpq_conninfo("postgresql+asyncpg://ims@h/ims") is None


def _two_servers(
    work_root: Path, s3_env: dict[str, str], database_url: str, name: str
) -> tuple[ImsServer, ImsServer]:
    extra = {"IMS_DATABASE_URL": database_url, "IMS_RUN_WORKERS": "false"}
    first = start_ims_server(work_root / f"{name}-a", s3_env, extra, args=["--workers", "2"])
    try:
        return first, start_ims_server(work_root / f"{name}-b", s3_env, extra)
    except Exception:
        first.stop()
        raise


@pytest.mark.postgres
def test_a_write_by_another_server_changes_the_etag_at_once(
    postgres: PostgresCluster, work_root: Path, s3_env: dict[str, str]
) -> None:
    name = f"pgreads_{uuid.uuid4().hex[:8]}"
    reader, writer = _two_servers(work_root, s3_env, postgres.create_database(name), name)
    try:
        with httpx.Client(base_url=reader.url, timeout=30) as read, httpx.Client(base_url=writer.url, timeout=30) as write:
            created = write.post("/v3/images", json={"name": "first", "metadata": {"a": "b"}})
            assert created.status_code == 201, created.text
            image_id = created.json()["id"]
            record = f"/v3/images/{image_id}"
            tags = {path: read.get(path).headers["etag"] for path in ("/v3/images", record)}
            for n in range(30):
                # Both processes of the reader have an entry under the old version before the write.
                for _ in range(4):
                    for path, tag in tags.items():
                        assert read.get(path, headers={"If-None-Match": tag}).status_code == 304
                patched = write.patch(record, json={"name": f"renamed-{n}"})
                assert patched.status_code == 200, patched.text
                # No pause: the write was acknowledged, so every later GET anywhere shows it.
                for _ in range(4):
                    got = read.get(record, headers={"If-None-Match": tags[record]})
                    assert got.status_code == 200 and got.json()["name"] == f"renamed-{n}"
                    listed = read.get("/v3/images", headers={"If-None-Match": tags["/v3/images"]})
                    assert listed.status_code == 200 and [i["name"] for i in listed.json()] == [f"renamed-{n}"]
                assert got.headers["etag"] != tags[record] and listed.headers["etag"] != tags["/v3/images"]
                tags = {"/v3/images": listed.headers["etag"], record: got.headers["etag"]}
            # A write of another collection leaves the images' tags alone.
            key = write.post("/v3/public-keys", json={"name": "k", "public_key": KEY})
            assert key.status_code == 201, key.text
            assert read.get("/v3/images", headers={"If-None-Match": tags["/v3/images"]}).status_code == 304
            assert [k["id"] for k in read.get("/v3/public-keys").json()] == [key.json()["id"]]
    finally:
        writer.stop()
        reader.stop()
    assert "Traceback" not in reader.log(), reader.log()


@pytest.fixture
def own_cluster(work_root: Path) -> Iterator[PostgresCluster]:
    """A cluster this test may stop and start again without disturbing the session's."""
    work_root.chmod(work_root.stat().st_mode | 0o011)  # mkdtemp's 0700 keeps the postgres user out
    cluster = PostgresCluster.start(work_root / f"postgres-{uuid.uuid4().hex[:6]}")
    yield cluster
    if _is_up(cluster):
        cluster.stop()


def _is_up(cluster: PostgresCluster) -> bool:
    try:
        psycopg.connect(f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres", connect_timeout=5).close()
    except psycopg.OperationalError:
        return False
    return True


def _start_again(cluster: PostgresCluster) -> None:
    """pg_ctl start on the same data directory and port (PostgresCluster.start makes a new cluster)."""
    options = f"-c listen_addresses=127.0.0.1 -p {cluster.port} -k {cluster.base} -c fsync=off -c max_connections=200"
    data, log = str(cluster.base / "data"), str(cluster.base / "log")
    cluster._as_postgres([str(PG_BIN / "pg_ctl"), "-D", data, "-l", log, "-o", options, "-w", "start"])
    assert _is_up(cluster)


def _assert_all_answer(api: httpx.Client, paths: list[str], rounds: int = 6) -> None:
    # Several rounds: the server's requests are spread over its processes.
    for _ in range(rounds):
        for path in paths:
            response = api.get(path)
            assert response.status_code == 200, (path, response.status_code, response.text)


@pytest.mark.postgres
def test_database_down_answers_503_and_back_answers_again(
    own_cluster: PostgresCluster, work_root: Path, s3_env: dict[str, str]
) -> None:
    url = own_cluster.create_database("ims")
    server = start_ims_server(
        work_root / f"pgdown-{uuid.uuid4().hex[:6]}",
        s3_env,
        {"IMS_DATABASE_URL": url, "IMS_RUN_WORKERS": "false"},
        args=["--workers", "2"],
    )
    try:
        with httpx.Client(base_url=server.url, timeout=60) as api:
            image = api.post("/v3/images", json={"name": "i", "metadata": {"a": "b"}})
            assert image.status_code == 201, image.text
            paths = [*PATHS, f"/v3/images/{image.json()['id']}", f"/images/{image.json()['id']}"]
            _assert_all_answer(api, paths)
            tags = {path: api.get(path).headers["etag"] for path in paths}

            # Connections dropped while the database stays up (an idle timeout, a pooler's restart): no 503.
            with psycopg.connect(own_cluster.database_url("ims").replace("+psycopg", ""), autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = 'ims' AND pid <> pg_backend_pid()"
                )
            _assert_all_answer(api, paths)

            own_cluster.stop()
            for _ in range(4):
                for path in paths:
                    # Not from the cache either, not even for a matching tag: the version cannot be read.
                    for headers in ({}, {"If-None-Match": tags[path]}):
                        down = api.get(path, headers=headers)
                        assert down.status_code == 503, (path, down.status_code, down.text)
                        assert down.headers["content-type"] == "application/problem+json"
                        body = down.json()
                        assert body["status"] == 503 and body["title"] == "Service Unavailable", body
                        assert body["detail"].startswith("The database is not available: "), body
                        assert "password" not in body["detail"]
            _start_again(own_cluster)
            _assert_all_answer(api, paths)
            for path, tag in tags.items():
                assert api.get(path, headers={"If-None-Match": tag}).status_code == 304, path
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log and " 500" not in log, log
