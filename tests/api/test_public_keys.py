"""/public-keys under '', /v2 and /v3: fields, rules, status codes and bodies of the original."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.contract import (
    MISSING,
    NOT_FOUND,
    PREFIXES,
    TIMESTAMP,
    UNKNOWN,
    UUID4,
    assert_invalid,
    assert_no_content,
    assert_problem,
)
from tests.support.servers import start_ims_server

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO6ExampleKeyOnlyForTest test@ims"


def create(api: httpx.Client, prefix: str = "/v3", name: str = "key") -> dict[str, Any]:
    response = api.post(f"{prefix}/public-keys", json={"name": name, "public_key": KEY})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("prefix", PREFIXES)
def test_create_returns_the_record(api: httpx.Client, prefix: str) -> None:
    response = api.post(f"{prefix}/public-keys", json={"name": "admin", "public_key": KEY})
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"name", "public_key", "id", "created"}
    assert body["name"] == "admin" and body["public_key"] == KEY
    assert UUID4.match(body["id"])
    assert TIMESTAMP.match(body["created"])


def test_every_prefix_shares_one_store(api: httpx.Client) -> None:
    record = create(api, "")
    for prefix in PREFIXES:
        response = api.get(f"{prefix}/public-keys/{record['id']}")
        assert response.status_code == 200
        assert response.json() == record
        assert record in api.get(f"{prefix}/public-keys").json()


def test_names_and_keys_need_not_be_unique(api: httpx.Client) -> None:
    first, second = create(api, name="same"), create(api, name="same")
    assert first["id"] != second["id"]


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"public_key": KEY}, {"name": [MISSING]}),
        ({"name": "k"}, {"public_key": [MISSING]}),
        ({"name": "", "public_key": KEY}, {"name": ["name field must not be blank"]}),
        ({"name": "k", "public_key": ""}, {"public_key": ["public_key field must not be blank"]}),
        ({"name": 5, "public_key": KEY}, {"name": ["Not a valid string."]}),
        ({"name": "k", "public_key": KEY, "comment": "x"}, {"comment": [UNKNOWN]}),
        # Server-set fields are not input: the original answers "Unknown field." for them too.
        ({"name": "k", "public_key": KEY, "id": "x"}, {"id": [UNKNOWN]}),
        ({"name": "k", "public_key": KEY, "created": "2020-01-01T00:00:00"}, {"created": [UNKNOWN]}),
    ],
)
@pytest.mark.parametrize("prefix", ["", "/v3"])
def test_create_rules(api: httpx.Client, prefix: str, body: dict[str, Any], errors: dict[str, Any]) -> None:
    assert_invalid(api.post(f"{prefix}/public-keys", json=body), errors)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_unknown_ids_are_404(api: httpx.Client, prefix: str) -> None:
    # Ids are never format-checked: any string that is not a record is simply not found.
    for record_id in ("00000000-0000-4000-8000-000000000000", "not-a-uuid", "x" * 300):
        assert_problem(api.get(f"{prefix}/public-keys/{record_id}"), 404, NOT_FOUND)
        assert_problem(api.delete(f"{prefix}/public-keys/{record_id}"), 404, NOT_FOUND)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_there_is_no_patch(api: httpx.Client, prefix: str) -> None:
    record = create(api)
    response = api.patch(f"{prefix}/public-keys/{record['id']}", json={"name": "new"})
    assert response.status_code == 405
    assert api.get(f"/v3/public-keys/{record['id']}").json()["name"] == "key"


@pytest.mark.parametrize("prefix", ["", "/v2"])
def test_v2_delete_is_permanent(api: httpx.Client, prefix: str) -> None:
    record = create(api)
    assert_no_content(api.delete(f"{prefix}/public-keys/{record['id']}"))
    assert_problem(api.get(f"/v3/public-keys/{record['id']}"), 404)
    assert_problem(api.get(f"/v3/deleted/public-keys/{record['id']}"), 404)


def test_v3_delete_is_soft_and_reversible(api: httpx.Client) -> None:
    record = create(api)
    assert_no_content(api.delete(f"/v3/public-keys/{record['id']}"))
    assert_problem(api.get(f"/v3/public-keys/{record['id']}"), 404)
    assert record["id"] not in [item["id"] for item in api.get("/v3/public-keys").json()]

    deleted = api.get(f"/v3/deleted/public-keys/{record['id']}").json()
    assert set(deleted) == {"name", "public_key", "id", "created", "deleted"}
    assert {k: v for k, v in deleted.items() if k != "deleted"} == record
    assert TIMESTAMP.match(deleted["deleted"]) and deleted["deleted"] >= record["created"]
    assert deleted in api.get("/v3/deleted/public-keys").json()

    assert_no_content(api.patch(f"/v3/deleted/public-keys/{record['id']}", json={"operation": "undelete"}))
    assert api.get(f"/v3/public-keys/{record['id']}").json() == record
    assert_problem(api.get(f"/v3/deleted/public-keys/{record['id']}"), 404)

    api.delete(f"/v3/public-keys/{record['id']}")
    assert_no_content(api.delete(f"/v3/deleted/public-keys/{record['id']}"))
    assert_problem(api.get(f"/v3/deleted/public-keys/{record['id']}"), 404)
    assert_problem(api.get(f"/v3/public-keys/{record['id']}"), 404)


def test_collection_deletes(fresh_api: httpx.Client) -> None:
    soft = [create(fresh_api) for _ in range(3)]
    assert_no_content(fresh_api.delete("/v3/public-keys"))
    assert fresh_api.get("/v3/public-keys").json() == []
    assert sorted(r["id"] for r in fresh_api.get("/v3/deleted/public-keys").json()) == sorted(r["id"] for r in soft)

    hard = [create(fresh_api, "") for _ in range(2)]
    assert_no_content(fresh_api.delete("/v2/public-keys"))
    assert fresh_api.get("/public-keys").json() == []
    # v2 removes only active records; the soft-deleted ones stay restorable.
    assert len(fresh_api.get("/v3/deleted/public-keys").json()) == 3
    assert all(fresh_api.get(f"/v3/public-keys/{r['id']}").status_code == 404 for r in hard)


def test_list_paging(fresh_api: httpx.Client) -> None:
    """Ours: `limit` and `offset`; records come in creation order."""
    made = [create(fresh_api, name=f"k{i}") for i in range(5)]
    assert fresh_api.get("/v3/public-keys").json() == made
    assert fresh_api.get("/v3/public-keys", params={"limit": 2}).json() == made[:2]
    assert fresh_api.get("/v3/public-keys", params={"limit": 2, "offset": 3}).json() == made[3:]
    assert_problem(fresh_api.get("/v3/public-keys", params={"limit": 0}), 400)
    assert_problem(fresh_api.get("/v3/public-keys", params={"offset": "x"}), 400)



@pytest.mark.slow
def test_writes_after_a_v2_collection_delete_survive_a_restart(tmp_path: Path, s3_env: dict[str, str]) -> None:
    """The original stopped saving a table after a v2 collection DELETE until its next restart."""
    first = start_ims_server(tmp_path / "ims", s3_env)
    try:
        with httpx.Client(base_url=first.url) as client:
            create(client, "")
            assert_no_content(client.delete("/public-keys"))
            kept = create(client, "", name="after")
    finally:
        first.stop()
    second = start_ims_server(tmp_path / "ims", s3_env)
    try:
        with httpx.Client(base_url=second.url) as client:
            assert client.get("/public-keys").json() == [kept]
    finally:
        second.stop()
