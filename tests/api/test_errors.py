"""Request handling shared by every endpoint: content type, bad and empty bodies, size limit, unknown URLs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.contract import (
    BAD_JSON,
    METHOD_NOT_ALLOWED,
    NO_INPUT,
    NOT_FOUND,
    NOT_JSON,
    URL_NOT_FOUND,
    assert_invalid,
    assert_message,
    assert_problem,
)
from tests.support.servers import start_ims_server

# Every endpoint that reads a body, with a body it accepts.
POSTS = [
    ("/v3/public-keys", {"name": "k", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"}),
    ("/public-keys", {"name": "k", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"}),
    ("/v2/recipes", {"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15"}),
    ("/v3/images", {"name": "i"}),
    ("/images", {"name": "i"}),
    ("/v3/remote-build-nodes", {"xname": "x3000c0s1b0n0"}),
]
POST_URLS = [url for url, _ in POSTS]
JSON = {"content-type": "application/json"}


def raw_json(value: object) -> bytes:
    # httpx sends no body at all for json=None, so the JSON text is written out.
    return json.dumps(value).encode()


@pytest.fixture(scope="module")
def patch_urls(api: httpx.Client) -> list[str]:
    recipe = api.post("/v3/recipes", json=dict(POSTS[2][1])).json()["id"]
    image = api.post("/v3/images", json={"name": "i"}).json()["id"]
    key = api.post("/v3/public-keys", json=dict(POSTS[0][1])).json()["id"]
    api.delete(f"/v3/public-keys/{key}")
    return [f"/v3/recipes/{recipe}", f"/recipes/{recipe}", f"/v2/images/{image}", f"/v3/deleted/public-keys/{key}",
            "/v3/deleted/public-keys"]


@pytest.mark.parametrize("url", POST_URLS)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None,
                                          "application/problem+json"])
def test_415_when_not_json(api: httpx.Client, url: str, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    assert_message(api.post(url, content=b'{"name": "x"}', headers=headers), 415, NOT_JSON)


def test_415_on_patch(api: httpx.Client, patch_urls: list[str]) -> None:
    for url in patch_urls:
        assert_message(api.patch(url, content=b"{}", headers={"content-type": "text/json"}), 415, NOT_JSON)


@pytest.mark.parametrize("url", POST_URLS)
def test_charset_is_allowed(api: httpx.Client, url: str) -> None:
    body = dict(POSTS)[url]
    response = api.post(url, content=json.dumps(body).encode(),
                        headers={"content-type": "application/json; charset=utf-8"})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("raw", [b"{", b"{'name': 'x'}", b"", b"   ", b"\xff\xfe", b"[1,]"])
@pytest.mark.parametrize("url", POST_URLS)
def test_400_for_malformed_json(api: httpx.Client, url: str, raw: bytes) -> None:
    assert_message(api.post(url, content=raw, headers=JSON), 400, BAD_JSON)


def test_400_for_malformed_json_on_patch(api: httpx.Client, patch_urls: list[str]) -> None:
    for url in patch_urls:
        assert_message(api.patch(url, content=b"{nope", headers=JSON), 400, BAD_JSON)


@pytest.mark.parametrize("falsy", [{}, [], None, 0, "", False])
@pytest.mark.parametrize("url", POST_URLS)
def test_falsy_body_is_no_input(api: httpx.Client, url: str, falsy: object) -> None:
    assert_problem(api.post(url, content=raw_json(falsy), headers=JSON), 400, NO_INPUT)


def test_falsy_body_on_patch(api: httpx.Client, patch_urls: list[str]) -> None:
    for url in patch_urls:
        for falsy in ({}, [], None):
            assert_problem(api.patch(url, content=raw_json(falsy), headers=JSON), 400, NO_INPUT)


@pytest.mark.parametrize("body", [[1], "x", 5, True, [{"name": "k"}]])
@pytest.mark.parametrize("url", POST_URLS)
def test_non_object_body_is_422(api: httpx.Client, url: str, body: object) -> None:
    """The original crashed with 500 on image POST; every endpoint answers marshmallow's 422 here."""
    assert_invalid(api.post(url, json=body), {"_schema": ["Invalid input type."]})


def test_non_object_body_on_patch(api: httpx.Client, patch_urls: list[str]) -> None:
    for url in patch_urls:
        assert_invalid(api.patch(url, json=["x"]), {"_schema": ["Invalid input type."]})


@pytest.mark.parametrize("url", POST_URLS)
def test_413_over_the_limit(api: httpx.Client, url: str) -> None:
    big = b'{"name": "' + b"x" * (1024 * 1024) + b'"}'
    assert_problem(api.post(url, content=big, headers=JSON), 413)


def test_413_without_content_length(api: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    response = api.post("/v3/images", content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert_problem(response, 413)


def test_a_body_just_under_the_limit_is_read(api: httpx.Client) -> None:
    value = "x" * (1024 * 1024 - 100)  # names are bounded (255); metadata values are not
    response = api.post("/v3/images", json={"name": "big", "metadata": {"k": value}})
    assert response.status_code == 201
    api.delete(f"/v2/images/{response.json()['id']}")


@pytest.mark.slow
def test_the_limit_is_a_setting(tmp_path: Path, s3_env: dict[str, str]) -> None:
    server = start_ims_server(tmp_path / "ims", s3_env, {"IMS_MAX_BODY_BYTES": "2048"})
    try:
        with httpx.Client(base_url=server.url) as client:
            assert client.post("/v3/images", json={"name": "x", "metadata": {"k": "x" * 1500}}).status_code == 201
            assert_problem(client.post("/v3/images", json={"name": "x", "metadata": {"k": "x" * 3000}}), 413)
    finally:
        server.stop()


@pytest.mark.parametrize(
    "path",
    ["/v3/images/", "/images/", "/v2/recipes/", "/v3/deleted/images/", "/v3/remote-build-nodes/", "/healthz/live/",
     "/v4/images", "/v3/image", "/", "/apis/ims/v3/images", "/v3/images/a/b"],
)
def test_unknown_urls(api: httpx.Client, path: str) -> None:
    for method in ("GET", "POST", "DELETE"):
        assert_problem(api.request(method, path), 404, URL_NOT_FOUND)


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/v3/images"), ("PATCH", "/v3/images"), ("POST", "/v3/images/x"), ("PATCH", "/public-keys/x"),
     ("PUT", "/v3/deleted/recipes"), ("POST", "/v3/deleted/images/x"), ("PUT", "/v3/remote-build-nodes")],
)
def test_405_body(api: httpx.Client, method: str, path: str) -> None:
    response = api.request(method, path)
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"message": METHOD_NOT_ALLOWED, "status": 405, "title": "Method Not Allowed",
                               "detail": METHOD_NOT_ALLOWED}


@pytest.mark.parametrize("path", ["/version", "/healthz/live", "/healthz/ready"])
def test_405_body_outside_the_api(api: httpx.Client, path: str) -> None:
    assert_message(api.post(path, json={"x": 1}), 405, METHOD_NOT_ALLOWED)


def test_patch_of_an_unknown_id_is_404_whatever_the_body(api: httpx.Client) -> None:
    for headers, content in (({"content-type": "text/plain"}, b"x"), ({"content-type": "application/json"}, b"{")):
        assert_problem(api.patch("/v3/images/unknown", content=content, headers=headers), 404, NOT_FOUND)
        assert_problem(api.patch("/v3/deleted/recipes/unknown", content=content, headers=headers), 404, NOT_FOUND)


def test_post_reads_the_body_before_anything_else(api: httpx.Client) -> None:
    assert_message(api.post("/v3/images", content=b"x", headers={"content-type": "text/plain"}), 415, NOT_JSON)


def test_head_is_a_get_without_body(api: httpx.Client) -> None:
    get = api.get("/v3/images")
    head = api.head("/v3/images")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]
    assert api.head("/v3/images/unknown").status_code == 404


def test_options_lists_the_allowed_methods(api: httpx.Client) -> None:
    collection = api.options("/v3/images")
    assert collection.status_code == 200
    assert set(collection.headers["allow"].split(", ")) == {"GET", "HEAD", "OPTIONS", "POST", "DELETE"}
    item = api.options("/v3/images/any-id")
    assert set(item.headers["allow"].split(", ")) == {"GET", "HEAD", "OPTIONS", "PATCH", "DELETE"}
    assert api.options("/v3/nothing-here").status_code == 404
