"""/v3/remote-build-nodes: registration records and their status endpoints (v3 only)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from tests.support.contract import (
    MISSING,
    NO_INPUT,
    NOT_FOUND,
    UNKNOWN,
    assert_invalid,
    assert_no_content,
    assert_problem,
)

STATUS_FIELDS = {"xname", "sshStatus", "podmanStatus", "nodeArch", "numCurrentJobs", "ableToRunJobs"}


def xname() -> str:
    return f"x3000c0s{uuid.uuid4().int % 10000}b0n0"


def test_register_get_and_delete(api: httpx.Client) -> None:
    name = xname()
    response = api.post("/v3/remote-build-nodes", json={"xname": name})
    assert response.status_code == 201
    assert response.json() == {"xname": name}
    assert api.get(f"/v3/remote-build-nodes/{name}").json() == {"xname": name}
    assert {"xname": name} in api.get("/v3/remote-build-nodes").json()
    assert_no_content(api.delete(f"/v3/remote-build-nodes/{name}"))
    assert_problem(api.get(f"/v3/remote-build-nodes/{name}"), 404, NOT_FOUND)
    assert_problem(api.delete(f"/v3/remote-build-nodes/{name}"), 404, NOT_FOUND)


def test_reregistering_overwrites(api: httpx.Client) -> None:
    name = xname()
    assert api.post("/v3/remote-build-nodes", json={"xname": name}).status_code == 201
    assert api.post("/v3/remote-build-nodes", json={"xname": name}).status_code == 201
    assert [n for n in api.get("/v3/remote-build-nodes").json() if n["xname"] == name] == [{"xname": name}]


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"xname": ""}, {"xname": ["name field must not be blank"]}),
        ({"name": "x1"}, {"name": [UNKNOWN], "xname": [MISSING]}),
        ({"xname": "x1", "arch": "x86_64"}, {"arch": [UNKNOWN]}),
        ({"xname": 7}, {"xname": ["Not a valid string."]}),
    ],
)
def test_register_rules(api: httpx.Client, body: dict[str, object], errors: dict[str, object]) -> None:
    assert_invalid(api.post("/v3/remote-build-nodes", json=body), errors)


def test_empty_body(api: httpx.Client) -> None:
    assert_problem(api.post("/v3/remote-build-nodes", json={}), 400, NO_INPUT)


def test_status_endpoints(api: httpx.Client) -> None:
    name = xname()
    api.post("/v3/remote-build-nodes", json={"xname": name})
    one = api.get(f"/v3/remote-build-nodes/status/{name}")
    assert one.status_code == 200
    assert set(one.json()) == STATUS_FIELDS and one.json()["xname"] == name
    assert isinstance(one.json()["numCurrentJobs"], int) and isinstance(one.json()["ableToRunJobs"], bool)
    listed = api.get("/v3/remote-build-nodes/status").json()
    assert isinstance(listed, list)
    assert [s for s in listed if s["xname"] == name] and all(set(s) == STATUS_FIELDS for s in listed)
    assert_problem(api.get("/v3/remote-build-nodes/status/x9999c0s0b0n0"), 404, NOT_FOUND)
    api.delete(f"/v3/remote-build-nodes/{name}")


def test_delete_status_is_an_unknown_xname(api: httpx.Client) -> None:
    # DELETE .../status reaches the {xname} route with xname "status", as in the original.
    assert_problem(api.delete("/v3/remote-build-nodes/status"), 404, NOT_FOUND)


@pytest.mark.parametrize("path", ["/remote-build-nodes", "/v2/remote-build-nodes", "/remote-build-nodes/status"])
def test_only_under_v3(api: httpx.Client, path: str) -> None:
    assert_problem(api.get(path), 404)


def test_no_patch(api: httpx.Client) -> None:
    assert api.patch(f"/v3/remote-build-nodes/{xname()}", json={"xname": "y"}).status_code == 405


def test_delete_all(fresh_api: httpx.Client) -> None:
    for _ in range(3):
        fresh_api.post("/v3/remote-build-nodes", json={"xname": xname()})
    assert len(fresh_api.get("/v3/remote-build-nodes").json()) == 3
    assert_no_content(fresh_api.delete("/v3/remote-build-nodes"))
    assert fresh_api.get("/v3/remote-build-nodes").json() == []
    assert fresh_api.get("/v3/remote-build-nodes/status").json() == []
