"""Per-job tokens against a running `ims serve` (IMS_AUTH=none, the default install): what a job's token allows,
that it stops working when the job ends, and the presigned upload flow end to end against SeaweedFS.

The server runs without workers; this module runs the real job worker (ims.jobs.worker) on the same database
with a LocalRunner whose stage is a tiny shell script that saves the token it was handed and sleeps, as
tests/jobs/test_local_runner.py does. So each job is real (created over the API, launched with its
environment, watched, revoked) without kiwi or an SSH session.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from tests.support.s3data import put_recipe
from tests.support.servers import ImsServer, PostgresCluster, start_ims_server

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location
from ims.jobs.local import LocalRunner
from ims.jobs.worker import JobWorker
from ims.services.context import s3_config_from
from ims.settings import load_settings
from ims.store.db import Database

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jobs run as root")

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@ims"
# The stage: keep the token where the test finds it, then wait to be stopped. $0 is the stage's name.
STAGE = 'printf %s "$IMS_JOB_TOKEN" > "$IMAGE_ROOT_PARENT/../token.part" && mv "$IMAGE_ROOT_PARENT/../token.part" "$IMAGE_ROOT_PARENT/../token"; exec sleep 300'
MiB = 1024 * 1024


@dataclass
class Stack:
    server: ImsServer
    api: httpx.Client  # anonymous = admin under IMS_AUTH=none
    worker: JobWorker
    jobs_dir: Path
    store: ArtifactStore
    key_id: str
    recipe_id: str


@dataclass
class Job:
    id: str
    token: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextlib.contextmanager
def running_stack(
    data_dir: Path, s3_env: dict[str, str], store: ArtifactStore, database_url: str = ""
) -> Iterator[Stack]:
    extra = {"IMS_RUN_WORKERS": "false", **({"IMS_DATABASE_URL": database_url} if database_url else {})}
    server = start_ims_server(data_dir, s3_env, extra, args=["--workers", "1"])  # one process: light on 2 CPUs
    port = server.url.rsplit(":", 1)[1]
    settings = load_settings(
        IMS_DATA_DIR=str(data_dir),
        IMS_HOST="127.0.0.1",
        IMS_PORT=port,
        IMS_TASK_POLL_SECONDS="0.2",
        IMS_DATABASE_URL=database_url,
        **s3_env,
    )
    database = Database(settings.effective_database_url)
    runner = LocalRunner(settings.effective_jobs_dir, stage_command=["/bin/sh", "-c", STAGE])
    worker = JobWorker(database, settings, ArtifactStore(s3_config_from(settings)), runner, poll_seconds=0.2)
    worker.start()
    api = httpx.Client(base_url=server.url, timeout=30)
    try:
        key = api.post("/v3/public-keys", json={"name": "job-token-key", "public_key": PUBLIC_KEY})
        assert key.status_code == 201, key.text
        stored = put_recipe(store)
        recipe = api.post(
            "/v3/recipes",
            json={"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15", "link": stored.link},
        )
        assert recipe.status_code == 201, recipe.text
        yield Stack(server, api, worker, settings.effective_jobs_dir, store, key.json()["id"], recipe.json()["id"])
    finally:
        api.delete("/v3/jobs")
        deadline = time.monotonic() + 30
        while worker.watching() and time.monotonic() < deadline:
            time.sleep(0.2)
        worker.stop()
        api.close()
        database.dispose()
        server.stop()


@pytest.fixture(scope="module")
def stack(work_root: Path, s3_env: dict[str, str], artifact_store: ArtifactStore) -> Iterator[Stack]:
    with running_stack(work_root / f"ims-jobtokens-{uuid.uuid4().hex[:8]}", s3_env, artifact_store) as running:
        yield running


def start_job(stack: Stack) -> Job:
    body = {
        "job_type": "create",
        "artifact_id": stack.recipe_id,
        "public_key_id": stack.key_id,
        "image_root_archive_name": f"result-{uuid.uuid4().hex[:6]}",
    }
    created = stack.api.post("/v3/jobs", json=body)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    token_file = stack.jobs_dir / job_id / "token"
    deadline = time.monotonic() + 30
    while not token_file.exists():
        assert time.monotonic() < deadline, "the job's stage did not start"
        time.sleep(0.1)
    return Job(job_id, token_file.read_text())


@pytest.fixture(scope="module")
def job_a(stack: Stack) -> Job:
    return start_job(stack)


@pytest.fixture(scope="module")
def job_b(stack: Stack) -> Job:
    return start_job(stack)


def call(stack: Stack, job: Job, method: str, path: str, body: Any = None) -> httpx.Response:
    return stack.api.request(method, path, headers=job.headers(), json=body)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def test_the_token_is_well_formed_and_stored_only_as_a_hash(stack: Stack, job_a: Job) -> None:
    assert job_a.token.startswith("imsjob_") and len(job_a.token) == 50
    engine = sqlalchemy.create_engine(f"sqlite:///{stack.server.data_dir / 'ims.sqlite3'}")
    with engine.connect() as conn:
        stored = conn.execute(sqlalchemy.text("SELECT token_hash FROM job_tokens WHERE job_id = :id"), {"id": job_a.id})
        assert stored.scalar_one() == hashlib.sha256(job_a.token.encode()).hexdigest()
        row = conn.execute(sqlalchemy.text("SELECT * FROM jobs WHERE id = :id"), {"id": job_a.id}).mappings().one()
    engine.dispose()
    assert all(job_a.token not in str(value) for value in row.values())  # record, launch, runner handle
    assert job_a.token not in stack.api.get(f"/v3/jobs/{job_a.id}").text
    assert job_a.token not in stack.server.log()
    assert job_a.token not in (stack.jobs_dir / job_a.id / "job.log").read_text()


def test_a_job_reads_only_its_own_job(stack: Stack, job_a: Job, job_b: Job) -> None:
    for prefix in ("", "/v2", "/v3"):
        response = call(stack, job_a, "GET", f"{prefix}/jobs/{job_a.id}")
        assert response.status_code == 200 and response.json()["id"] == job_a.id
        assert_problem(call(stack, job_a, "GET", f"{prefix}/jobs/{job_b.id}"), 403)
    for path in (
        "/v3/jobs",
        "/v3/images",
        "/v3/recipes",
        "/v3/public-keys",
        f"/v3/jobs/{job_a.id}/logs",
        "/v3/deleted/images",
        "/v3/remote-build-nodes",
    ):
        assert_problem(call(stack, job_a, "GET", path), 403)


def test_a_job_patches_only_its_status(stack: Stack, job_a: Job, job_b: Job) -> None:
    response = call(stack, job_a, "PATCH", f"/v3/jobs/{job_a.id}", {"status": "fetching_recipe", "status_reason": "ok"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "fetching_recipe"
    before_b = stack.api.get(f"/v3/jobs/{job_b.id}").json()
    assert_problem(call(stack, job_a, "PATCH", f"/v3/jobs/{job_b.id}", {"status": "error"}), 403)
    assert_problem(call(stack, job_a, "PATCH", f"/jobs/{job_b.id}", {"status_reason": "x"}), 403)
    assert_problem(call(stack, job_a, "PATCH", f"/v3/jobs/{job_a.id}", {"enable_debug": True}), 403)
    other_image = stack.api.post("/v3/images", json={"name": "not-the-jobs"}).json()["id"]
    body = assert_problem(call(stack, job_a, "PATCH", f"/v3/jobs/{job_a.id}", {"resultant_image_id": other_image}), 403)
    assert "only to an image it created" in body["detail"]
    assert stack.api.get(f"/v3/jobs/{job_b.id}").json() == before_b
    assert stack.api.get(f"/v3/jobs/{job_a.id}").json()["resultant_image_id"] is None


def test_every_records_write_is_refused(stack: Stack, job_a: Job, job_b: Job) -> None:
    image = stack.api.post("/v3/images", json={"name": "admins"}).json()
    recipe_before = stack.api.get(f"/v3/recipes/{stack.recipe_id}").json()
    writes = [
        ("POST", "/v3/public-keys", {"name": "k", "public_key": PUBLIC_KEY}),
        ("POST", "/public-keys", {"name": "k", "public_key": PUBLIC_KEY}),
        ("DELETE", f"/v3/public-keys/{stack.key_id}", None),
        ("DELETE", "/v2/public-keys", None),
        ("POST", "/v3/recipes", {"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15"}),
        ("PATCH", f"/v3/recipes/{stack.recipe_id}", {"name": "stolen"}),
        ("DELETE", f"/v3/recipes/{stack.recipe_id}", None),
        ("PATCH", f"/v3/images/{image['id']}", {"name": "stolen"}),
        ("PATCH", f"/v2/images/{image['id']}", {"link": None}),
        ("DELETE", f"/v3/images/{image['id']}", None),
        ("DELETE", f"/v2/images/{image['id']}?cascade=false", None),
        ("DELETE", "/v3/images", None),
        (
            "POST",
            "/v3/jobs",
            {
                "job_type": "create",
                "artifact_id": stack.recipe_id,
                "public_key_id": stack.key_id,
                "image_root_archive_name": "x",
            },
        ),
        ("DELETE", "/v3/jobs", None),
        ("DELETE", f"/v3/jobs/{job_b.id}", None),
        ("DELETE", f"/v3/jobs/{job_a.id}", None),
        ("PATCH", "/v3/deleted/images", {"operation": "undelete"}),
        ("DELETE", "/v3/deleted/recipes", None),
        ("POST", "/v3/remote-build-nodes", {"xname": "x3000c0s1b0n0"}),
    ]
    for method, path, body in writes:
        assert_problem(call(stack, job_a, method, path, body), 403)
    assert stack.api.get(f"/v3/images/{image['id']}").json() == image
    assert stack.api.get(f"/v3/recipes/{stack.recipe_id}").json() == recipe_before
    assert stack.api.get(f"/v3/public-keys/{stack.key_id}").status_code == 200
    assert stack.api.get(f"/v3/jobs/{job_b.id}").status_code == 200


def test_input_url(stack: Stack, job_a: Job, job_b: Job) -> None:
    response = call(stack, job_a, "GET", f"/v3/jobs/{job_a.id}/input")
    assert response.status_code == 200, response.text
    body = response.json()
    location = S3Location.parse(body["path"])
    assert location.key.endswith("/recipe.tar.gz")
    data = httpx.get(body["url"], timeout=30).content
    assert data == stack.store.read_bytes(location)
    assert body["md5"] in ("", hashlib.md5(data).hexdigest())  # noqa: S324
    assert_problem(call(stack, job_a, "GET", f"/v3/jobs/{job_b.id}/input"), 403)
    assert stack.api.get(f"/v3/jobs/{job_b.id}/input").status_code == 200  # an admin may
    assert_problem(stack.api.get(f"/v3/jobs/{uuid.uuid4()}/input"), 404)


def _upload(stack: Stack, job: Job, image_id: str, name: str, chunks: list[bytes]) -> dict[str, Any]:
    started = call(stack, job, "POST", f"/v3/jobs/{job.id}/uploads", {"image_id": image_id, "name": name})
    assert started.status_code == 201, started.text
    upload_id = started.json()["upload_id"]
    numbers = list(range(1, len(chunks) + 1))
    urls = call(stack, job, "POST", f"/v3/jobs/{job.id}/uploads/{upload_id}/parts", {"part_numbers": numbers})
    assert urls.status_code == 200, urls.text
    parts = []
    for item, chunk in zip(urls.json()["part_urls"], chunks, strict=True):
        put = httpx.put(item["url"], content=chunk, timeout=60)
        assert put.status_code == 200, put.text
        parts.append({"part_number": item["part_number"], "etag": put.headers["etag"]})
    md5 = hashlib.md5(b"".join(chunks)).hexdigest()  # noqa: S324
    done = call(
        stack,
        job,
        "POST",
        f"/v3/jobs/{job.id}/uploads/{upload_id}/complete",
        {"parts": parts, "md5sum": md5, "metadata": {"x-shasta-ims-image-id": image_id}},
    )
    assert done.status_code == 200, done.text
    return dict(done.json())


def test_a_job_creates_uploads_and_links_its_image(stack: Stack, job_a: Job) -> None:
    assert_problem(
        call(
            stack,
            job_a,
            "POST",
            "/v3/images",
            {"name": "x", "link": {"path": "s3://boot-images/x/manifest.json", "type": "s3"}},
        ),
        403,
    )
    created = call(stack, job_a, "POST", "/v3/images", {"name": "result", "arch": "x86_64"})
    assert created.status_code == 201, created.text
    image_id = created.json()["id"]
    assert call(stack, job_a, "GET", f"/v3/images/{image_id}").status_code == 200
    assert call(stack, job_a, "GET", f"/images/{image_id}").status_code == 200
    assert_problem(call(stack, job_a, "PATCH", f"/v3/images/{image_id}", {"name": "renamed"}), 403)

    # rootfs in two parts; the first is PUT twice (a retry replaces it).
    first, second = os.urandom(5 * MiB), os.urandom(300 * 1024)
    started = call(
        stack,
        job_a,
        "POST",
        f"/v3/jobs/{job_a.id}/uploads",
        {"image_id": image_id, "name": "rootfs", "content_type": "application/vnd.cray.image.rootfs.squashfs"},
    )
    assert started.status_code == 201, started.text
    upload = started.json()
    assert upload["bucket"] == "boot-images" and upload["key"] == f"{image_id}/rootfs"
    base = f"/v3/jobs/{job_a.id}/uploads/{upload['upload_id']}"
    urls = call(stack, job_a, "POST", base + "/parts", {"part_numbers": [1, 2]}).json()["part_urls"]
    assert [item["part_number"] for item in urls] == [1, 2]
    assert httpx.put(urls[0]["url"], content=os.urandom(5 * MiB), timeout=60).status_code == 200
    etags = [
        httpx.put(item["url"], content=chunk, timeout=60).headers["etag"]
        for item, chunk in zip(urls, (first, second), strict=True)
    ]
    md5 = hashlib.md5(first + second).hexdigest()  # noqa: S324
    parts = [{"part_number": n, "etag": etag} for n, etag in zip((1, 2), etags, strict=True)]
    # A wrong etag: S3 refuses, IMS says so, nothing is created.
    bad = call(
        stack,
        job_a,
        "POST",
        base + "/complete",
        {"parts": [{"part_number": 1, "etag": '"0000"'}, parts[1]], "md5sum": md5},
    )
    assert_problem(bad, 422)
    assert stack.store.head(S3Location("boot-images", f"{image_id}/rootfs")) is None
    done = call(
        stack,
        job_a,
        "POST",
        base + "/complete",
        {"parts": parts, "md5sum": md5, "metadata": {"x-shasta-ims-image-name": "result"}},
    )
    assert done.status_code == 200, done.text
    info = stack.store.head(S3Location("boot-images", f"{image_id}/rootfs"))
    assert info is not None
    assert done.json() == {
        "bucket": "boot-images",
        "key": f"{image_id}/rootfs",
        "etag": info.etag,
        "size": len(first) + len(second),
    }
    assert info.metadata["md5sum"] == md5 and info.metadata["x-shasta-ims-image-name"] == "result"
    assert info.content_type == "application/vnd.cray.image.rootfs.squashfs"
    assert stack.store.read_bytes(S3Location("boot-images", f"{image_id}/rootfs")) == first + second
    assert_problem(call(stack, job_a, "POST", base + "/parts", {"part_numbers": [3]}), 404)  # completed: gone

    manifest = json.dumps(
        {
            "version": "1.0",
            "created": "now",
            "artifacts": [
                {
                    "link": {"path": f"s3://boot-images/{image_id}/rootfs", "etag": info.etag, "type": "s3"},
                    "md5": md5,
                    "type": "application/vnd.cray.image.rootfs.squashfs",
                }
            ],
        }
    ).encode()
    manifest_done = _upload(stack, job_a, image_id, "manifest.json", [manifest])
    link = {"path": f"s3://boot-images/{image_id}/manifest.json", "etag": manifest_done["etag"], "type": "s3"}
    assert_problem(
        call(
            stack,
            job_a,
            "PATCH",
            f"/v3/images/{image_id}",
            {"link": {"path": f"s3://boot-images/{stack.recipe_id}/manifest.json", "type": "s3"}},
        ),
        403,
    )
    linked = call(stack, job_a, "PATCH", f"/v3/images/{image_id}", {"link": link})
    assert linked.status_code == 200, linked.text
    assert linked.json()["link"]["path"] == link["path"]
    result = call(stack, job_a, "PATCH", f"/v3/jobs/{job_a.id}", {"resultant_image_id": image_id})
    assert result.status_code == 200 and result.json()["resultant_image_id"] == image_id
    log = stack.server.log()
    assert f"audit who=job:{job_a.id} method=POST path=/v3/images id={image_id} status=201" in log
    assert f"audit who=job:{job_a.id} method=PATCH path=/v3/images/{image_id} id={image_id} status=200" in log


def test_uploads_only_to_its_own_keys(stack: Stack, job_a: Job, job_b: Job) -> None:
    admins = stack.api.post("/v3/images", json={"name": "admins"}).json()["id"]
    b_image = call(stack, job_b, "POST", "/v3/images", {"name": "b-result"}).json()["id"]
    for image_id in (admins, b_image, "../x", stack.recipe_id):
        response = call(stack, job_a, "POST", f"/v3/jobs/{job_a.id}/uploads", {"image_id": image_id, "name": "rootfs"})
        assert response.status_code in (403, 422), response.text
        assert_problem(response, response.status_code)
    # Its own job id in the path is required, whatever the image.
    assert_problem(
        call(stack, job_a, "POST", f"/v3/jobs/{job_b.id}/uploads", {"image_id": b_image, "name": "kernel"}), 403
    )
    a_image = call(stack, job_a, "POST", "/v3/images", {"name": "a-result"}).json()["id"]
    # Bad input: clear 4xx, nothing started.
    for body in (
        {"image_id": a_image, "name": "../../etc/passwd"},
        {"image_id": a_image, "name": "evil"},
        {"image_id": a_image},
        {"image_id": a_image, "name": "kernel", "content_type": "not a type"},
        {"image_id": a_image, "name": "kernel", "bucket": "ims"},
        ["not", "an", "object"],
    ):
        assert_problem(call(stack, job_a, "POST", f"/v3/jobs/{job_a.id}/uploads", body), 422)
    bad_json = stack.api.post(
        f"/v3/jobs/{job_a.id}/uploads", headers={**job_a.headers(), "Content-Type": "text/plain"}, content=b"x"
    )
    assert bad_json.status_code == 415
    assert stack.store.list_keys("boot-images", f"{a_image}/") == []

    started = call(stack, job_a, "POST", f"/v3/jobs/{job_a.id}/uploads", {"image_id": a_image, "name": "kernel"})
    assert started.status_code == 201, started.text
    upload_id = started.json()["upload_id"]
    base = f"/v3/jobs/{job_a.id}/uploads/{upload_id}"
    for numbers in ([], [0], [10001], list(range(1, 102)), ["1"], [1.5]):
        assert_problem(call(stack, job_a, "POST", base + "/parts", {"part_numbers": numbers}), 422)
    for body in (
        {"parts": [], "md5sum": "0" * 32},
        {"parts": [{"part_number": 1, "etag": "x"}], "md5sum": "xyz"},
        {"parts": [{"part_number": 1, "etag": "x"}, {"part_number": 1, "etag": "y"}], "md5sum": "0" * 32},
        {"parts": [{"part_number": 1, "etag": "x"}], "md5sum": "0" * 32, "metadata": {"md5sum": "x"}},
        {"parts": [{"part_number": 1, "etag": "x"}], "md5sum": "0" * 32, "metadata": {"Bad Key": "x"}},
    ):
        assert_problem(call(stack, job_a, "POST", base + "/complete", body), 422)
    assert_problem(
        call(stack, job_a, "POST", f"/v3/jobs/{job_a.id}/uploads/not-an-id/parts", {"part_numbers": [1]}), 404
    )
    # Job B may not use A's upload, not even under its own job path (the key is not one of B's images).
    assert_problem(
        call(stack, job_b, "POST", f"/v3/jobs/{job_b.id}/uploads/{upload_id}/parts", {"part_numbers": [1]}), 403
    )
    assert_problem(call(stack, job_b, "DELETE", f"/v3/jobs/{job_b.id}/uploads/{upload_id}"), 403)
    # Abort: the upload is gone.
    assert call(stack, job_a, "DELETE", base).status_code == 204
    assert_problem(call(stack, job_a, "POST", base + "/parts", {"part_numbers": [1]}), 404)
    assert stack.store.list_keys("boot-images", f"{a_image}/") == []


def test_an_admin_may_use_the_upload_endpoints(stack: Stack, job_b: Job) -> None:
    image_id = call(stack, job_b, "POST", "/v3/images", {"name": "b-admin-upload"}).json()["id"]
    started = stack.api.post(f"/v3/jobs/{job_b.id}/uploads", json={"image_id": image_id, "name": "initrd"})
    assert started.status_code == 201, started.text
    assert stack.api.delete(f"/v3/jobs/{job_b.id}/uploads/{started.json()['upload_id']}").status_code == 204
    other = stack.api.post("/v3/images", json={"name": "not-b"}).json()["id"]
    assert_problem(stack.api.post(f"/v3/jobs/{job_b.id}/uploads", json={"image_id": other, "name": "initrd"}), 403)


def _assert_revoked(stack: Stack, job: Job) -> None:
    response = call(stack, job, "GET", f"/v3/jobs/{job.id}")
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith('Bearer realm="ims", error="invalid_token"')


@pytest.mark.slow
def test_the_token_ends_with_the_job(stack: Stack) -> None:
    ended = start_job(stack)
    # What the job left half done goes when its process is gone: an upload it never completed (no parts
    # left in S3), and the image it created but never linked, with the objects it did upload.
    image_id = call(stack, ended, "POST", "/v3/images", {"name": "half"}).json()["id"]
    _upload(stack, ended, image_id, "kernel", [b"kernel bytes"])
    upload = call(stack, ended, "POST", f"/v3/jobs/{ended.id}/uploads", {"image_id": image_id, "name": "rootfs"})
    urls = call(
        stack, ended, "POST", f"/v3/jobs/{ended.id}/uploads/{upload.json()['upload_id']}/parts", {"part_numbers": [1]}
    )
    assert httpx.put(urls.json()["part_urls"][0]["url"], content=b"x" * 1024, timeout=30).status_code == 200

    def unfinished() -> list[Any]:
        reply = stack.store.client.list_multipart_uploads(Bucket="boot-images", Prefix=f"{image_id}/")
        return list(reply.get("Uploads", []))

    assert unfinished()
    done = call(stack, ended, "PATCH", f"/v3/jobs/{ended.id}", {"status": "success"})
    assert done.status_code == 200, done.text
    _assert_revoked(stack, ended)

    deadline = time.monotonic() + 30
    while unfinished() or stack.api.get(f"/v3/images/{image_id}").status_code != 404:
        assert time.monotonic() < deadline, "the unfinished upload or the unlinked image is still there"
        time.sleep(0.2)
    assert stack.store.list_keys("boot-images", f"{image_id}/") == []
    assert_problem(call(stack, ended, "POST", "/v3/images", {"name": "late"}), 401)
    # Moving it back does not bring the token back.
    assert stack.api.patch(f"/v3/jobs/{ended.id}", json={"status": "creating"}).status_code == 200
    _assert_revoked(stack, ended)

    deleted = start_job(stack)
    assert stack.api.delete(f"/v3/jobs/{deleted.id}").status_code == 204
    _assert_revoked(stack, deleted)

    # The worker ends a job whose process died with `error`: its token goes with it.
    died = start_job(stack)
    handle = stack.api.get(f"/v3/jobs/{died.id}")
    assert handle.status_code == 200
    launcher = _launcher_pid(stack, died.id)
    os.kill(launcher, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack.api.get(f"/v3/jobs/{died.id}").json()["status"] != "error":
        assert time.monotonic() < deadline, "the worker did not notice the job's end"
        time.sleep(0.2)
    _assert_revoked(stack, died)
    unknown = Job(died.id, "imsjob_" + "x" * 43)
    _assert_revoked(stack, unknown)


def _launcher_pid(stack: Stack, job_id: str) -> int:
    engine = sqlalchemy.create_engine(f"sqlite:///{stack.server.data_dir / 'ims.sqlite3'}")
    try:
        deadline = time.monotonic() + 20
        while True:
            with engine.connect() as conn:
                runner = conn.execute(
                    sqlalchemy.text("SELECT runner FROM jobs WHERE id = :id"), {"id": job_id}
                ).scalar()
            if runner:
                handle = json.loads(runner) if isinstance(runner, str) else runner
                return int(handle["pid"])
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_job_tokens_work_alongside_oidc(stack: Stack, job_b: Job, s3_env: dict[str, str]) -> None:
    """A second server with IMS_AUTH=oidc on the same database: the job's token is recognised there too."""
    from tests.support.jwks import LocalIssuer

    issuer = LocalIssuer().start()
    issuer.add_key("ES256")
    env = {"IMS_AUTH": "oidc", "IMS_OIDC_ISSUER": issuer.issuer, "IMS_OIDC_AUDIENCE": "ims", "IMS_RUN_WORKERS": "false"}
    server = start_ims_server(stack.server.data_dir, s3_env, env, args=["--workers", "1"])
    try:
        with httpx.Client(base_url=server.url, timeout=30) as oidc_api:
            assert_problem(oidc_api.get(f"/v3/jobs/{job_b.id}"), 401)
            own = oidc_api.get(f"/v3/jobs/{job_b.id}", headers=job_b.headers())
            assert own.status_code == 200 and own.json()["id"] == job_b.id
            assert_problem(oidc_api.get("/v3/jobs", headers=job_b.headers()), 403)
            assert_problem(oidc_api.delete(f"/v3/jobs/{job_b.id}", headers=job_b.headers()), 403)
            admin = issuer.token(next(iter(issuer.keys.values())), roles=["admin"])
            assert oidc_api.get("/v3/jobs", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    finally:
        # Not server.stop(): that ends the jobs of its database, which are this module's.
        assert server.process is not None
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(30)
        issuer.stop()


@pytest.mark.slow
@pytest.mark.postgres
def test_tokens_on_postgresql(
    work_root: Path, s3_env: dict[str, str], artifact_store: ArtifactStore, postgres: PostgresCluster
) -> None:
    url = postgres.create_database(f"jobtokens_{uuid.uuid4().hex[:8]}")
    with running_stack(work_root / f"ims-jobtokens-pg-{uuid.uuid4().hex[:8]}", s3_env, artifact_store, url) as pg:
        job, other = start_job(pg), start_job(pg)
        assert call(pg, job, "GET", f"/v3/jobs/{job.id}").status_code == 200
        assert_problem(call(pg, job, "GET", f"/v3/jobs/{other.id}"), 403)
        image_id = call(pg, job, "POST", "/v3/images", {"name": "pg-result"}).json()["id"]
        assert call(pg, job, "GET", f"/v3/images/{image_id}").status_code == 200
        patched = call(pg, job, "PATCH", f"/v3/jobs/{job.id}", {"resultant_image_id": image_id, "status": "success"})
        assert patched.status_code == 200, patched.text
        _assert_revoked(pg, job)
        assert pg.api.delete(f"/v3/jobs/{other.id}").status_code == 204
        _assert_revoked(pg, other)
