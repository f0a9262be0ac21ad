"""Record writes answered before routing (ims.api.fast_writes) answer exactly as the routes do.

With IMS_AUTH=none a request that carries any Authorization header is still the anonymous administrator's,
but goes through FastAPI's routes: the same request with and without the header must get the same status,
headers and bytes (ids and timestamps of new records aside)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import pytest
from tests.support.servers import ImsServer

ROUTED = {"Authorization": "Bearer not-a-token"}  # ignored with IMS_AUTH=none, but skips the fast path
PREFIXES = ("/v3", "/v2", "")
JSON = {"Content-Type": "application/json"}


def _both(api: httpx.Client, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, httpx.Response]:
    headers = kwargs.pop("headers", {})
    fast = api.request(method, path, headers=headers, **kwargs)
    routed = api.request(method, path, headers={**headers, **ROUTED}, **kwargs)
    return fast, routed


def _same(fast: httpx.Response, routed: httpx.Response) -> None:
    assert (fast.status_code, fast.content) == (routed.status_code, routed.content)
    for name in ("content-type", "content-length", "allow"):
        assert fast.headers.get(name) == routed.headers.get(name), name


def _shape(response: httpx.Response) -> list[tuple[str, str]]:
    """A new record's member names in order and their JSON types (its id and created differ)."""
    return [(name, type(value).__name__) for name, value in response.json().items()]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(
    ("resource", "body"),
    [
        ("public-keys", {"name": "k", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"}),
        ("recipes", {"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15"}),
        ("images", {"name": "i", "metadata": {"a": "b"}}),
    ],
)
def test_create_answers_as_the_route(api: httpx.Client, prefix: str, resource: str, body: dict[str, Any]) -> None:
    fast, routed = _both(api, "POST", f"{prefix}/{resource}", json=body)
    assert fast.status_code == routed.status_code == 201, (fast.text, routed.text)
    assert _shape(fast) == _shape(routed)
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    created = fast.json()
    assert api.get(f"/v3/{resource}/{created['id']}").json() == created  # durable and readable at once


@pytest.mark.parametrize("prefix", PREFIXES)
def test_patch_and_soft_delete_answer_as_the_route(api: httpx.Client, prefix: str) -> None:
    ids = [api.post("/v3/images", json={"name": f"p{n}"}).json()["id"] for n in range(2)]
    fast = api.patch(f"{prefix}/images/{ids[0]}", json={"name": "renamed", "arch": "aarch64"})
    routed = api.patch(f"{prefix}/images/{ids[1]}", json={"name": "renamed", "arch": "aarch64"}, headers=ROUTED)
    assert fast.status_code == routed.status_code == 200
    assert _shape(fast) == _shape(routed)
    assert fast.json()["name"] == routed.json()["name"] == "renamed"
    if prefix == "/v3":
        deleted = [api.delete(f"/v3/images/{ids[0]}"), api.delete(f"/v3/images/{ids[1]}", headers=ROUTED)]
        assert [r.status_code for r in deleted] == [204, 204]
        assert deleted[0].content == deleted[1].content == b""
        assert api.get(f"/v3/deleted/images/{ids[0]}").status_code == 200


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(
    ("method", "content", "headers"),
    [
        ("POST", b'{"name": "x"}', {}),  # no Content-Type: 415
        ("POST", b"", JSON),  # empty: 400
        ("POST", b"{not json", JSON),  # malformed: 400
        ("POST", b'{"name": 7}', JSON),  # invalid: 422 or 400 as the route says
        ("POST", b'{"name": "x", "nonsense": 1}', JSON),
        ("POST", b"[]", JSON),
        ("POST", b"[" * 200 + b"]" * 200, JSON),  # too deep
        ("POST", b'{"name": "x", "link": {"path": "s3://boot-images/none/manifest.json", "type": "s3"}}', JSON),
        ("POST", b'{"name": "x", "metadata": "a string"}', JSON),
    ],
)
def test_refusals_of_a_create_are_the_routes(
    api: httpx.Client, prefix: str, method: str, content: bytes, headers: dict[str, str]
) -> None:
    fast, routed = _both(api, method, f"{prefix}/images", content=content, headers=headers)
    assert fast.status_code >= 400
    _same(fast, routed)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_refusals_of_changes_are_the_routes(api: httpx.Client, prefix: str) -> None:
    missing = str(uuid.uuid4())
    image = api.post("/v3/images", json={"name": "refusals"}).json()["id"]
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("PATCH", f"{prefix}/images/{missing}", {"json": {"name": "x"}}),
        ("PATCH", f"{prefix}/images/{image}", {"json": {"name": 5}}),
        ("PATCH", f"{prefix}/images/{image}", {"json": {"metadata": {"operation": "explode"}}}),
        ("PATCH", f"{prefix}/images/{image}", {"content": b"nope", "headers": JSON}),
        ("PATCH", f"{prefix}/images/{image}", {"content": b"{}"}),
        ("PATCH", f"{prefix}/public-keys/{missing}", {"json": {"name": "x"}}),  # no PATCH: 405 from the router
        ("PATCH", f"{prefix}/recipes/{missing}", {"json": {"name": "x"}}),
        ("POST", f"{prefix}/images/{image}", {"json": {"name": "x"}}),  # 405
    ]
    if prefix == "/v3":
        cases.append(("DELETE", f"/v3/images/{missing}", {}))
        cases.append(("DELETE", f"/v3/recipes/{missing}", {}))
    for method, path, kwargs in cases:
        fast, routed = _both(api, method, path, **kwargs)
        assert fast.status_code >= 400, (method, path)
        _same(fast, routed)


def test_a_body_over_the_limit_is_refused_alike(api: httpx.Client) -> None:
    huge = b'{"name": "' + b"x" * (11 * 1024 * 1024) + b'"}'
    fast, routed = _both(api, "POST", "/v3/images", content=huge, headers=JSON)
    assert fast.status_code == 413
    _same(fast, routed)


def test_writes_are_audited_and_counted_by_route(api: httpx.Client, ims_server: ImsServer) -> None:
    image = api.post("/v3/images", json={"name": "audited"}).json()["id"]
    assert api.patch(f"/images/{image}", json={"name": "audited again"}).status_code == 200
    assert api.delete(f"/v3/images/{image}").status_code == 204
    expected = [
        f"audit who=anonymous method=POST path=/v3/images id={image} status=201",
        f"audit who=anonymous method=PATCH path=/images/{image} id={image} status=200",
        f"audit who=anonymous method=DELETE path=/v3/images/{image} id={image} status=204",
    ]
    deadline = time.monotonic() + 10
    while not all(line in ims_server.log() for line in expected) and time.monotonic() < deadline:
        time.sleep(0.1)
    log = ims_server.log()
    for line in expected:
        assert line in log
    metrics = api.get("/metrics").text
    for method, route, status in (
        ("POST", "/v3/images", "201"),
        ("PATCH", "/images/{record_id}", "200"),
        ("DELETE", "/v3/images/{record_id}", "204"),
    ):
        pattern = rf'ims_http_requests_total{{method="{method}",route="{re.escape(route)}",status="{status}"}} [1-9]'
        assert re.search(pattern, metrics), (method, route)


def test_which_writes_skip_the_router() -> None:
    from ims.api.fast_writes import operation

    taken = {
        (method, version, resource, record_id is not None)
        for method in ("POST", "PATCH", "DELETE", "PUT")
        for version in ("/v3", "/v2", "")
        for resource in ("images", "recipes", "public-keys")
        for record_id in (None, "some-id")
        if operation(method, version, resource, record_id) is not None
    }
    creates = {("POST", version, resource, False) for version in ("/v3", "/v2", "") for resource in
               ("images", "recipes", "public-keys")}
    patches = {("PATCH", version, resource, True) for version in ("/v3", "/v2", "") for resource in
               ("images", "recipes")}
    soft_deletes = {("DELETE", "/v3", resource, True) for resource in ("images", "recipes", "public-keys")}
    assert taken == creates | patches | soft_deletes
