"""/healthz/live, /healthz/ready and /version."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from tests.support.contract import METHOD_NOT_ALLOWED, assert_message
from tests.support.servers import start_ims_server

from ims.embedded.seaweedfs import SeaweedFS


def test_live(api: httpx.Client) -> None:
    response = api.get("/healthz/live")
    assert response.status_code == 200
    assert response.json() == {}


def test_ready(api: httpx.Client) -> None:
    response = api.get("/healthz/ready")
    assert response.status_code == 200
    assert response.json() == {}


def test_version(api: httpx.Client) -> None:
    response = api.get("/version")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"version"} and isinstance(body["version"], str) and body["version"]


@pytest.mark.parametrize("path", ["/healthz/live", "/healthz/ready", "/version"])
def test_only_get(api: httpx.Client, path: str) -> None:
    assert_message(api.delete(path), 405, METHOD_NOT_ALLOWED)


@pytest.mark.parametrize("path", ["/v3/healthz/ready", "/v2/version"])
def test_not_under_a_version_prefix(api: httpx.Client, path: str) -> None:
    assert api.get(path).status_code == 404


@pytest.mark.slow
def test_ready_answers_503_while_s3_is_down(tmp_path: Path) -> None:
    """Ours: ready checks the database and S3 (the original always answered 200 {}); live stays 200."""
    s3 = SeaweedFS(tmp_path / "s3")
    s3.start()
    config = s3.s3_config()
    env = {"S3_ENDPOINT": config.endpoint, "S3_ACCESS_KEY": config.access_key, "S3_SECRET_KEY": config.secret_key,
           "S3_CONNECT_TIMEOUT": "1", "S3_READ_TIMEOUT": "2"}
    server = start_ims_server(tmp_path / "ims", env)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/healthz/ready").status_code == 200
            s3.stop()
            # Ready is a cached probe (every IMS_HEALTH_PROBE_SECONDS): it notices within a few seconds.
            deadline = time.monotonic() + 10
            while (response := client.get("/healthz/ready")).status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert response.status_code == 503
            assert response.json() == {"database": True, "s3": False}
            assert client.get("/healthz/live").json() == {}
            # Records still answer from the database while S3 is away.
            assert client.get("/v3/public-keys").status_code == 200
    finally:
        server.stop()
        s3.stop()
