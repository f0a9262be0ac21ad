"""Conditional requests: an ETag on every GET of a record or a list, `If-None-Match` -> 304 with no body, under
'', /v2 and /v3 and /v3/deleted; any write changes the tag."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.contract import PREFIXES
from tests.support.s3data import put_image
from tests.support.servers import ImsServer, start_ims_server

from ims.artifacts.s3 import ArtifactStore

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS etag@ims"


@pytest.fixture(scope="module")
def server(work_root: Path, s3_env: dict[str, str]) -> Iterator[ImsServer]:
    # No job worker: jobs stay as POST made them.
    started = start_ims_server(work_root / f"ims-etag-{uuid.uuid4().hex[:8]}", s3_env, {"IMS_RUN_WORKERS": "false"})
    yield started
    started.stop()


@pytest.fixture(scope="module")
def api(server: ImsServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def created(api: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(path, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def assert_conditional(api: httpx.Client, path: str) -> str:
    """The GET carries a quoted ETag; sending it back gives 304 with no body; another tag gives 200."""
    first = api.get(path)
    assert first.status_code == 200, first.text
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2
    again = api.get(path)
    assert again.headers["etag"] == etag and again.content == first.content
    # With a query string the route answers (not the middleware before routing): the same bytes and tag.
    routed = api.get(path + ("&" if "?" in path else "?") + "ignored=1")
    assert routed.headers["etag"] == etag and routed.content == first.content
    assert routed.headers["content-type"] == first.headers["content-type"] == "application/json"
    not_modified = api.get(path, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    for header in (f"W/{etag}", f'"nope", {etag}', "*"):
        assert api.get(path, headers={"If-None-Match": header}).status_code == 304, header
    other = api.get(path, headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.content == first.content
    head = api.head(path, headers={"If-None-Match": etag})
    assert head.status_code == 304 and head.content == b""
    return etag


@pytest.mark.parametrize("prefix", PREFIXES)
def test_records_and_lists_of_every_kind(api: httpx.Client, prefix: str) -> None:
    key = created(api, f"{prefix}/public-keys", {"name": "k", "public_key": KEY})
    recipe = created(
        api, f"{prefix}/recipes", {"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15", "link": None}
    )
    image = created(api, f"{prefix}/images", {"name": "i", "metadata": {"a": "b"}})
    for path in (
        f"{prefix}/public-keys",
        f"{prefix}/public-keys/{key['id']}",
        f"{prefix}/recipes",
        f"{prefix}/recipes/{recipe['id']}",
        f"{prefix}/images",
        f"{prefix}/images/{image['id']}",
        f"{prefix}/jobs",
        f"{prefix}/images?limit=1",
        f"{prefix}/images?limit=1&offset=1",
    ):
        assert_conditional(api, path)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_a_write_changes_the_tags(api: httpx.Client, prefix: str) -> None:
    image = created(api, f"{prefix}/images", {"name": "before"})
    one, every = f"{prefix}/images/{image['id']}", f"{prefix}/images"
    tag_one, tag_every = assert_conditional(api, one), assert_conditional(api, every)

    patched = api.patch(one, json={"name": "after"})
    assert patched.status_code == 200, patched.text
    for path, old in ((one, tag_one), (every, tag_every)):
        response = api.get(path, headers={"If-None-Match": old})
        assert response.status_code == 200, path
        assert response.headers["etag"] != old
        assert "after" in response.text
    # A write to another record changes the list's tag, not this record's.
    tag_one, tag_every = api.get(one).headers["etag"], api.get(every).headers["etag"]
    created(api, f"{prefix}/images", {"name": "another"})
    assert api.get(one, headers={"If-None-Match": tag_one}).status_code == 304
    assert api.get(every, headers={"If-None-Match": tag_every}).status_code == 200


def test_deleted_records_and_lists(api: httpx.Client) -> None:
    image = created(api, "/v3/images", {"name": "to-delete"})
    live_tag = api.get("/v3/images").headers["etag"]
    assert api.delete(f"/v3/images/{image['id']}").status_code == 204
    assert api.get(f"/v3/images/{image['id']}").status_code == 404
    assert api.get("/v3/images", headers={"If-None-Match": live_tag}).status_code == 200
    deleted_tag = assert_conditional(api, "/v3/deleted/images")
    one_tag = assert_conditional(api, f"/v3/deleted/images/{image['id']}")
    assert api.patch(f"/v3/deleted/images/{image['id']}", json={"operation": "undelete"}).status_code == 204
    assert api.get(f"/v3/deleted/images/{image['id']}", headers={"If-None-Match": one_tag}).status_code == 404
    assert api.get("/v3/deleted/images", headers={"If-None-Match": deleted_tag}).status_code == 200
    assert api.get(f"/v3/images/{image['id']}").json()["name"] == "to-delete"


def test_jobs(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    key = created(api, "/v3/public-keys", {"name": "k", "public_key": KEY})
    image = created(api, "/v3/images", {"name": "img", "link": put_image(artifact_store).link})
    before = {prefix: api.get(f"{prefix}/jobs").headers["etag"] for prefix in PREFIXES}
    job = created(
        api,
        "/v3/jobs",
        {
            "job_type": "customize",
            "artifact_id": image["id"],
            "public_key_id": key["id"],
            "image_root_archive_name": "x",
        },
    )
    for prefix in PREFIXES:
        assert api.get(f"{prefix}/jobs", headers={"If-None-Match": before[prefix]}).status_code == 200
        tag = assert_conditional(api, f"{prefix}/jobs/{job['id']}")
        assert_conditional(api, f"{prefix}/jobs")
        assert_conditional(api, f"{prefix}/jobs?status=creating&job_type=customize")
    patched = api.patch(f"/v3/jobs/{job['id']}", json={"status": "fetching_image"})
    assert patched.status_code == 200, patched.text
    response = api.get(f"/v3/jobs/{job['id']}", headers={"If-None-Match": tag})
    assert response.status_code == 200 and response.json()["status"] == "fetching_image"
    filtered = api.get("/v3/jobs", params={"status": "creating"}).json()
    assert job["id"] not in {found["id"] for found in filtered}
    assert job["id"] in {found["id"] for found in api.get("/v3/jobs", params={"status": "fetching_image"}).json()}


def test_errors_carry_no_etag(api: httpx.Client) -> None:
    missing = api.get(f"/v3/images/{uuid.uuid4()}", headers={"If-None-Match": "*"})
    assert missing.status_code == 404 and "etag" not in missing.headers
    bad = api.get("/v3/jobs", params={"status": "nonsense"})
    assert bad.status_code == 400 and "etag" not in bad.headers
