"""Issue 10: S3 hung (SIGSTOP), stopped and restarted during every kind of request and background task.

Reads and S3-free writes stay fast, requests that need S3 fail fast with 503, /healthz/ready answers
within 2 s, and once S3 is back every task finishes: 0 dangling links, 0 orphaned objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from tests.support.s3data import BOOT_BUCKET, RECIPE_BUCKET, put_image, put_recipe, register_image
from tests.support.servers import ImsServer, start_ims_server

from ims.artifacts.s3 import ArtifactStore, S3Config
from ims.domain.links import S3Location
from ims.embedded.seaweedfs import SeaweedFS

pytestmark = pytest.mark.slow

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"
FIGURES = Path(os.environ.get("IMS_FAULT_FIGURES", "")) if os.environ.get("IMS_FAULT_FIGURES") else None


class Weed:
    """A SeaweedFS that can be hung, stopped and restarted on the same port with the same data."""

    def __init__(self, root: Path) -> None:
        self.server = SeaweedFS(root)
        self.server.start()
        self.port = self.server.s3_port
        ArtifactStore(self.server.s3_config()).ensure_buckets([RECIPE_BUCKET, BOOT_BUCKET])

    def config(self) -> S3Config:
        return self.server.s3_config()

    def _signal(self, signum: int) -> None:
        assert self.server.process is not None
        os.killpg(self.server.process.pid, signum)

    def hang(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        self._signal(signal.SIGCONT)
        self.server.stop()

    def restart(self) -> None:
        self.server = SeaweedFS(self.server.data_dir, s3_port=self.port)
        self.server.start()


@pytest.fixture
def weed(tmp_path: Path) -> Iterator[Weed]:
    found = Weed(tmp_path / "s3")
    yield found
    with contextlib.suppress(Exception):
        found.stop()


@pytest.fixture
def server(tmp_path: Path, weed: Weed) -> Iterator[ImsServer]:
    config = weed.config()
    env = {"S3_ENDPOINT": config.endpoint, "S3_ACCESS_KEY": config.access_key, "S3_SECRET_KEY": config.secret_key,
           "IMS_S3_REQUEST_TIMEOUT": "2", "S3_CONNECT_TIMEOUT": "3", "S3_READ_TIMEOUT": "5",
           "IMS_TASK_POLL_SECONDS": "0.2", "IMS_HEALTH_PROBE_SECONDS": "0.5"}
    found = start_ims_server(tmp_path / "ims", env)
    yield found
    found.stop()


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def tasks(server: ImsServer) -> dict[str, int]:
    engine = sqlalchemy.create_engine(f"sqlite:///{server.data_dir / 'ims.sqlite3'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT state, count(*) FROM tasks GROUP BY state")).all()
    finally:
        engine.dispose()
    return {state: count for state, count in rows}


def wait_tasks_done(server: ImsServer, timeout: float = 180) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = tasks(server)
        if not counts.get("pending") and not counts.get("running"):
            return counts
        assert time.monotonic() < deadline, f"tasks not finished: {counts}"
        time.sleep(0.5)


def listed(store: ArtifactStore, manifest_path: str) -> set[tuple[str, str]]:
    location = S3Location.parse(manifest_path)
    manifest = store.read_json(location)
    found = {(location.bucket, location.key)}
    for entry in manifest.get("artifacts", []):
        target = S3Location.parse(entry["link"]["path"])
        found.add((target.bucket, target.key))
    return found


def check_store(api: httpx.Client, store: ArtifactStore) -> dict[str, Any]:
    """Every record's link resolves (with everything its manifest lists) and no object is unreferenced."""
    referenced: set[tuple[str, str]] = set()
    dangling: list[str] = []
    for kind in ("images", "recipes"):
        for deleted in (False, True):
            path = f"/v3/deleted/{kind}" if deleted else f"/v3/{kind}"
            for record in api.get(path).json():
                link = record.get("link")
                if not link:
                    continue
                location = S3Location.parse(link["path"])
                if kind == "recipes":
                    if store.head(location) is None:
                        dangling.append(link["path"])
                    referenced.add((location.bucket, location.key))
                    continue
                try:
                    objects = listed(store, link["path"])
                except Exception:
                    dangling.append(link["path"])
                    continue
                for bucket, key in objects:
                    if store.head(S3Location(bucket, key)) is None:
                        dangling.append(f"s3://{bucket}/{key}")
                referenced |= objects
                if deleted:
                    # the deleted manifest lists the moved manifest, which lists the moved artifacts' old paths
                    pass
    everything = {(bucket, key) for bucket in (BOOT_BUCKET, RECIPE_BUCKET) for key in store.list_keys(bucket)}
    orphans = sorted(f"s3://{b}/{k}" for b, k in everything - referenced)
    return {"objects": len(everything), "dangling": dangling, "orphans": orphans}


def test_s3_hang_stop_and_restart(server: ImsServer, weed: Weed) -> None:
    store = ArtifactStore(weed.config())
    figures: dict[str, Any] = {}
    with httpx.Client(base_url=server.url, timeout=60) as api:
        # --- records with artifacts, made while S3 is well
        images = [register_image(api, store, name=f"img{i}")[0] for i in range(8)]
        recipes = []
        for i in range(4):
            stored = put_recipe(store)
            body = {"name": f"r{i}", "recipe_type": "kiwi-ng", "linux_distribution": "sles15", "link": stored.link}
            recipes.append(api.post("/v3/recipes", json=body).json())
        spare = put_image(store)  # uploaded, to be registered while S3 hangs
        # two soft-deleted early, to undelete and purge during the faults
        for record in (images[0], images[1]):
            assert api.delete(f"/v3/images/{record['id']}").status_code == 204
        assert api.delete(f"/v3/recipes/{recipes[0]['id']}").status_code == 204
        wait_tasks_done(server)

        # --- hang S3 right after queueing every kind of background task
        assert api.delete(f"/v3/images/{images[2]['id']}").status_code == 204  # soft delete: 4 moves + write
        assert api.delete(f"/v2/images/{images[3]['id']}").status_code == 204  # v2 cascade
        assert api.delete(f"/v3/recipes/{recipes[1]['id']}").status_code == 204  # recipe move
        assert api.delete(f"/v3/deleted/images/{images[1]['id']}").status_code == 204  # purge
        weed.hang()
        hang_started = time.monotonic()
        try:
            reads, writes, ready, s3_writes = [], [], [], []
            while time.monotonic() - hang_started < 12:
                response, took = timed(lambda: api.get("/v3/images"))
                assert response.status_code == 200
                reads.append(took)
                response, took = timed(lambda: api.get("/healthz/ready"))
                assert took < 2.0, took
                ready.append((response.status_code, took))
                response, took = timed(lambda: api.post("/v3/public-keys", json={"name": "k", "public_key": KEY}))
                assert response.status_code == 201
                writes.append(took)
                response, took = timed(lambda: api.patch(f"/v3/images/{images[4]['id']}", json={"name": "renamed"}))
                assert response.status_code == 200
                writes.append(took)
                response, took = timed(
                    lambda: api.post("/v3/images", json={"name": "spare", "link": spare.link})
                )
                assert response.status_code == 503, response.text
                s3_writes.append(took)
                response, took = timed(
                    lambda: api.patch(f"/v3/deleted/images/{images[0]['id']}", json={"operation": "undelete"})
                )
                assert response.status_code == 503, response.text
                s3_writes.append(took)
            # requests that need no S3 but queue S3 work are still accepted while it hangs
            assert api.delete(f"/v3/images/{images[5]['id']}").status_code == 204
            assert api.delete(f"/images/{images[6]['id']}").status_code == 204  # un-prefixed = v2 cascade
            live = api.get("/healthz/live")
            assert live.status_code == 200, live.text
        finally:
            weed.resume()
        assert ready[-1][0] == 503  # the probe noticed
        figures["hang"] = {
            "reads": len(reads), "read_median_s": statistics.median(reads), "read_max_s": max(reads),
            "writes": len(writes), "write_median_s": statistics.median(writes), "write_max_s": max(writes),
            "s3_writes_503": len(s3_writes), "s3_write_median_s": statistics.median(s3_writes),
            "s3_write_max_s": max(s3_writes), "ready_max_s": max(took for _, took in ready),
        }

        # --- stop S3 outright during more background work, then restart it
        assert api.delete(f"/v2/images/{images[7]['id']}").status_code == 204
        assert api.delete(f"/v3/recipes/{recipes[2]['id']}").status_code == 204
        weed.stop()
        down_started = time.monotonic()
        response, took = timed(lambda: api.post("/v3/images", json={"name": "spare", "link": spare.link}))
        assert response.status_code == 503
        assert api.get("/v3/recipes").status_code == 200
        assert api.delete(f"/v2/recipes/{recipes[3]['id']}").status_code == 204  # cascade while down
        time.sleep(3)
        weed.restart()
        figures["down_s"] = time.monotonic() - down_started

        # --- S3 back: what was refused now works, every task finishes
        deadline = time.monotonic() + 30
        while (response := api.post("/v3/images", json={"name": "spare", "link": spare.link})).status_code == 503:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.5)
        assert response.status_code == 201, response.text
        while (response := api.patch(f"/v3/deleted/images/{images[0]['id']}",
                                     json={"operation": "undelete"})).status_code == 503:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.5)
        assert response.status_code == 204, response.text
        counts = wait_tasks_done(server)
        assert set(counts) <= {"done"}, counts  # none failed for good
        result = check_store(api, store)
        figures["store"] = result | {"tasks": counts}
        metrics = api.get("/metrics").text
        figures["s3_errors_total"] = sum(
            float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("ims_s3_errors_total")
        )
        assert figures["s3_errors_total"] > 0
        if FIGURES is not None:
            FIGURES.write_text(json.dumps(figures, indent=2))
        print(json.dumps(figures, indent=2))
        assert result["dangling"] == []
        assert result["orphans"] == []
        med_read = figures["hang"]["read_median_s"]
        assert med_read < 0.5, figures
