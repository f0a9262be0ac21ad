"""Soft deletes of large images: the S3 move runs after the request, reads stay fast while it runs, and a
server killed in the middle of it finishes the move after a restart with nothing left behind."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.s3data import (
    BOOT_BUCKET,
    StoredImage,
    exists,
    keys_under,
    random_file,
    register_image,
    wait_for,
    wait_for_objects,
)
from tests.support.servers import ImsServer, start_ims_server

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location

pytestmark = pytest.mark.slow

ROOTFS_SIZE = 384 * 1024 * 1024
# A short lease lets the restarted server take over the killed one's task quickly.
LEASE = {"IMS_TASK_LEASE_SECONDS": "3"}


@pytest.fixture(scope="module")
def big_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = random_file(tmp_path_factory.mktemp("rootfs") / "rootfs", ROOTFS_SIZE)
    yield path
    path.unlink()


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def deleted_manifest(image_id: str) -> str:
    return f"deleted/{image_id}/deleted_manifest.json"


def assert_fully_deleted(store: ArtifactStore, image_id: str, stored: StoredImage) -> None:
    """Every object under deleted/, listed with its new etag in deleted_manifest.json, nothing half-done."""
    assert keys_under(store, BOOT_BUCKET, f"{image_id}/") == set()
    assert keys_under(store, BOOT_BUCKET, f"deleted/{image_id}/") == {
        *(f"deleted/{key}" for key in stored.keys), deleted_manifest(image_id)
    }
    manifest: dict[str, Any] = store.read_json(S3Location(BOOT_BUCKET, deleted_manifest(image_id)))
    paths = [entry["link"]["path"] for entry in manifest["artifacts"]]
    assert paths == [f"s3://{BOOT_BUCKET}/deleted/{key}" for key in stored.keys]
    for entry in manifest["artifacts"]:
        info = store.head(S3Location.parse(entry["link"]["path"]))
        assert info is not None and info.etag == entry["link"]["etag"]
    rootfs = store.head(S3Location(BOOT_BUCKET, f"deleted/{image_id}/rootfs"))
    assert rootfs is not None and rootfs.size == ROOTFS_SIZE
    uploads = store.client.list_multipart_uploads(Bucket=BOOT_BUCKET, Prefix=f"deleted/{image_id}/")
    assert not uploads.get("Uploads"), "an interrupted copy left a multipart upload behind"


def test_reads_stay_fast_during_a_large_move(
    fresh_ims_server: ImsServer, artifact_store: ArtifactStore, big_rootfs: Path
) -> None:
    with httpx.Client(base_url=fresh_ims_server.url, timeout=30) as api:
        record, stored = register_image(api, artifact_store, "big", rootfs=big_rootfs)
        others = [api.post("/v3/public-keys", json={"name": f"k{i}", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"}).json()
                  for i in range(20)]
        image_id = record["id"]

        started = time.monotonic()
        response = api.delete(f"/v3/images/{image_id}")
        delete_seconds = time.monotonic() - started
        assert response.status_code == 204

        reads = [
            f"/v3/deleted/images/{image_id}",
            "/v3/deleted/images",
            "/v3/public-keys",
            f"/v3/public-keys/{others[7]['id']}",
            "/v3/images",
        ]
        latencies: list[float] = []
        checked = 0.0
        while True:
            if time.monotonic() - checked > 0.25:
                checked = time.monotonic()
                if exists(artifact_store, BOOT_BUCKET, deleted_manifest(image_id)):
                    break
                assert checked - started < 300, "the move did not finish"
            path = reads[len(latencies) % len(reads)]
            before = time.monotonic()
            assert api.get(path).status_code == 200
            latencies.append(time.monotonic() - before)
        move_seconds = time.monotonic() - started

    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    print(f"\nDELETE {delete_seconds * 1000:.1f} ms; move {move_seconds:.1f} s; {len(latencies)} GETs during it: "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    assert delete_seconds < 0.5
    assert move_seconds > 1.0, "the move was too quick to measure anything"
    assert len(latencies) >= 50
    assert p99 < 0.1
    assert_fully_deleted(artifact_store, image_id, stored)


def test_a_move_cut_by_a_crash_resumes(tmp_path: Path, s3_env: dict[str, str], artifact_store: ArtifactStore,
                                       big_rootfs: Path) -> None:
    data_dir = tmp_path / "ims"
    first = start_ims_server(data_dir, s3_env, LEASE)
    try:
        with httpx.Client(base_url=first.url, timeout=30) as api:
            record, stored = register_image(api, artifact_store, "big", rootfs=big_rootfs)
            image_id = record["id"]
            assert api.delete(f"/v3/images/{image_id}").status_code == 204
        time.sleep(0.5)  # the worker is woken by the DELETE and starts at once
        # Still in the middle of it: the rootfs is not yet gone from its old place and nothing is finished.
        assert exists(artifact_store, BOOT_BUCKET, f"{image_id}/rootfs"), "the move ended before the kill"
        assert not exists(artifact_store, BOOT_BUCKET, deleted_manifest(image_id))
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
    finally:
        first.stop()

    second = start_ims_server(data_dir, s3_env, LEASE)
    try:
        with httpx.Client(base_url=second.url, timeout=30) as api:
            assert api.get(f"/v3/deleted/images/{image_id}").status_code == 200
            wait_for_objects(artifact_store, BOOT_BUCKET, present=[deleted_manifest(image_id)], timeout=180)
            assert_fully_deleted(artifact_store, image_id, stored)

            assert api.patch(f"/v3/deleted/images/{image_id}", json={"operation": "undelete"}).status_code == 204
            assert api.get(f"/v3/images/{image_id}").json() == record
            wait_for(lambda: not keys_under(artifact_store, BOOT_BUCKET, f"deleted/{image_id}/"), timeout=180,
                     what="the undelete")
            assert keys_under(artifact_store, BOOT_BUCKET, f"{image_id}/") == set(stored.keys)
            rootfs = artifact_store.head(S3Location(BOOT_BUCKET, f"{image_id}/rootfs"))
            assert rootfs is not None and rootfs.size == ROOTFS_SIZE
            # The restored objects pass the manifest checks again (a new record takes the link once it is free).
            assert api.delete(f"/v2/images/{image_id}", params={"cascade": "false"}).status_code == 204
            assert api.post("/v3/images", json={"name": "again", "link": stored.link}).status_code == 201
    finally:
        second.stop()
