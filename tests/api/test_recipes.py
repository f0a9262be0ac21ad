"""/recipes under '', /v2 and /v3: fields, defaults, link rules, PATCH and the v2 cascade delete."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.support.contract import (
    ARCH_CHOICES,
    CONFLICT,
    MISSING,
    NOT_FOUND,
    PREFIXES,
    TIMESTAMP,
    UNKNOWN,
    UUID4,
    VALIDATE_TAIL,
    assert_invalid,
    assert_no_content,
    assert_problem,
)
from tests.support.s3data import RECIPE_BUCKET, exists, put_recipe, wait_for_objects

from ims.artifacts.s3 import ArtifactStore

FIELDS = {"name", "link", "recipe_type", "linux_distribution", "template_dictionary", "require_dkms", "arch", "id",
          "created"}
BASE = {"name": "sles15", "recipe_type": "kiwi-ng", "linux_distribution": "sles15"}


def create(api: httpx.Client, prefix: str = "/v3", **fields: Any) -> dict[str, Any]:
    response = api.post(f"{prefix}/recipes", json={**BASE, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("prefix", PREFIXES)
def test_create_applies_defaults(api: httpx.Client, prefix: str) -> None:
    body = create(api, prefix)
    assert set(body) == FIELDS
    assert body["link"] is None
    assert body["template_dictionary"] == []
    assert body["require_dkms"] is True
    assert body["arch"] == "x86_64"
    assert UUID4.match(body["id"]) and TIMESTAMP.match(body["created"])
    assert api.get(f"{prefix}/recipes/{body['id']}").json() == body


def test_create_keeps_every_given_field(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    stored = put_recipe(artifact_store)
    fields = {
        "name": "cos",
        "recipe_type": "packer",
        "linux_distribution": "centos7",
        "link": stored.link,
        "template_dictionary": [{"key": "CSM_RELEASE_VERSION", "value": "1.6.0"}],
        "require_dkms": False,
        "arch": "aarch64",
    }
    body = create(api, **fields)
    assert {k: body[k] for k in fields} == fields
    for prefix in PREFIXES:
        assert api.get(f"{prefix}/recipes/{body['id']}").json() == body


def test_values_the_original_accepts(api: httpx.Client) -> None:
    # An explicit null template_dictionary is kept on POST; marshmallow's truthy strings count as booleans.
    assert create(api, template_dictionary=None)["template_dictionary"] is None
    assert create(api, require_dkms="false")["require_dkms"] is False
    assert create(api, require_dkms="yes")["require_dkms"] is True
    assert create(api, link=None)["link"] is None
    # Ours: debian12 for the Debian recipe IMS ships (see docs/compatibility.md).
    assert create(api, linux_distribution="debian12")["linux_distribution"] == "debian12"


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"name": None}, {"name": ["Field may not be null."]}),
        ({"name": ""}, {"name": ["name field must not be blank"]}),
        ({"recipe_type": "docker"}, {"recipe_type": ["Recipe type must be one of: kiwi-ng, packer."]}),
        (
            {"linux_distribution": "rhel9"},
            {"linux_distribution": ["Recipe type must be one of: sles12, sles15, centos7, debian12."]},
        ),
        ({"arch": "ppc64le"}, {"arch": [ARCH_CHOICES]}),
        ({"require_dkms": "maybe"}, {"require_dkms": ["Not a valid boolean."]}),
        ({"template_dictionary": {"a": "b"}}, {"template_dictionary": ["Not a valid list."]}),
        ({"template_dictionary": [{"key": "a"}]}, {"template_dictionary": {"0": {"value": [MISSING]}}}),
        (
            {"template_dictionary": [{"key": "a", "value": "b", "x": 1}]},
            {"template_dictionary": {"0": {"x": [UNKNOWN]}}},
        ),
        ({"link": {"path": "", "type": "s3"}}, {"link": {"path": ["name field must not be blank"]}}),
        ({"link": {"path": "s3://ims/x", "type": "S3"}}, {"link": {"type": ["Type must be one of: s3."]}}),
        ({"link": {"path": "s3://ims/x"}}, {"link": {"type": [MISSING]}}),
        ({"link": {"path": "s3://ims/x", "type": "s3", "size": 1}}, {"link": {"size": [UNKNOWN]}}),
        ({"id": "mine"}, {"id": [UNKNOWN]}),
        ({"created": "2020-01-01T00:00:00"}, {"created": [UNKNOWN]}),
    ],
)
def test_create_rules(api: httpx.Client, fields: dict[str, Any], errors: dict[str, Any]) -> None:
    assert_invalid(api.post("/v3/recipes", json={**BASE, **fields}), errors)


@pytest.mark.parametrize("missing", ["name", "recipe_type", "linux_distribution"])
def test_required_fields(api: httpx.Client, missing: str) -> None:
    body = {k: v for k, v in BASE.items() if k != missing}
    assert_invalid(api.post("/recipes", json=body), {missing: [MISSING]})


def test_link_must_exist_in_s3(api: httpx.Client) -> None:
    link = {"path": "s3://ims/recipes/nowhere/recipe.tar.gz", "etag": "abc", "type": "s3"}
    detail = f"The s3 artifact {link!r} cannot be validated. {VALIDATE_TAIL}"
    assert_problem(api.post("/v3/recipes", json={**BASE, "link": link}), 422, detail)


def test_link_without_etag_shows_an_empty_one(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    stored = put_recipe(artifact_store)
    body = create(api, link={"path": stored.link["path"], "type": "s3"})
    assert body["link"] == {"path": stored.link["path"], "etag": "", "type": "s3"}


def test_etag_mismatch_is_not_an_error(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    stored = put_recipe(artifact_store)
    assert create(api, link=dict(stored.link, etag="not-the-etag"))["link"]["etag"] == "not-the-etag"


@pytest.mark.parametrize("second_prefix", ["/v3", ""])
def test_link_paths_are_unique_among_active_recipes(
    api: httpx.Client, artifact_store: ArtifactStore, second_prefix: str
) -> None:
    """The original answered 500 here (a logging bug); ours is the 422 images already give."""
    stored = put_recipe(artifact_store)
    first = create(api, link=stored.link)
    response = api.post(f"{second_prefix}/recipes", json={**BASE, "link": stored.link})
    assert_problem(
        response,
        422,
        f"The link path {stored.link['path']} matches the link path for the IMS recipe record {first['id']}. The "
        "link value must be unique for each IMS recipe record. Determine the specific information that is missing "
        "or invalid and then re-run the request with valid information.",
    )
    other = create(api)
    assert api.patch(f"/v3/recipes/{other['id']}", json={"link": stored.link}).status_code == 422
    assert api.get(f"/v3/recipes/{other['id']}").json()["link"] is None


# --- PATCH


@pytest.mark.parametrize("prefix", PREFIXES)
def test_patch_fields(api: httpx.Client, prefix: str) -> None:
    record = create(api)
    changes = {"arch": "aarch64", "require_dkms": False, "template_dictionary": [{"key": "k", "value": "v"}]}
    response = api.patch(f"{prefix}/recipes/{record['id']}", json=changes)
    assert response.status_code == 200
    assert response.json() == {**record, **changes}
    assert api.get(f"/v3/recipes/{record['id']}").json() == {**record, **changes}


def test_patch_values_are_deserialized(api: httpx.Client) -> None:
    """The original stored the raw JSON value (`"false"` stayed a string); ours stores the boolean."""
    record = create(api)
    assert api.patch(f"/v3/recipes/{record['id']}", json={"require_dkms": "false"}).json()["require_dkms"] is False


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"created": "x"}, {"created": [UNKNOWN]}),
        ({"recipe_type": "packer"}, {"recipe_type": [UNKNOWN]}),
        ({"link": None}, {"link": ["Field may not be null."]}),
        ({"arch": "i386"}, {"arch": [ARCH_CHOICES]}),
        ({"template_dictionary": {"a": "b"}}, {"template_dictionary": ["Not a valid list."]}),
        # The original crashed with 500 on null (dict(None)); ours refuses it.
        ({"template_dictionary": None}, {"template_dictionary": ["Field may not be null."]}),
    ],
)
def test_patch_rules(api: httpx.Client, body: dict[str, Any], errors: dict[str, Any]) -> None:
    record = create(api)
    assert_invalid(api.patch(f"/v3/recipes/{record['id']}", json=body), errors)
    assert api.get(f"/v3/recipes/{record['id']}").json() == record


def test_patch_checks_the_id_before_the_body(api: httpx.Client) -> None:
    assert_problem(api.patch("/v3/recipes/missing", json={"name": "not even valid"}), 404, NOT_FOUND)
    assert_problem(api.patch("/recipes/missing", content=b"{", headers={"content-type": "text/plain"}), 404)


def test_patch_link_once(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    stored, other = put_recipe(artifact_store), put_recipe(artifact_store)
    record = create(api)
    url = f"/v3/recipes/{record['id']}"
    assert api.patch(url, json={"link": stored.link}).json()["link"] == stored.link
    # The same link again is a no-op; a different one is a conflict.
    assert api.patch(url, json={"link": stored.link}).status_code == 200
    assert_problem(api.patch(url, json={"link": other.link}), 409, CONFLICT)
    assert_problem(api.patch(url, json={"link": dict(stored.link, etag="changed")}), 409, CONFLICT)
    assert api.get(url).json()["link"] == stored.link


def test_patch_link_without_etag_stays_idempotent(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    """The original compared raw dicts, so after a restart (`etag` filled with "") the same PATCH gave 409.
    Ours treats a missing etag as "" on both sides."""
    stored = put_recipe(artifact_store)
    record = create(api)
    bare = {"path": stored.link["path"], "type": "s3"}
    url = f"/v3/recipes/{record['id']}"
    assert api.patch(url, json={"link": bare}).json()["link"] == dict(bare, etag="")
    assert api.patch(url, json={"link": bare}).status_code == 200
    assert api.patch(url, json={"link": dict(bare, etag="")}).status_code == 200


def test_patch_link_must_exist(api: httpx.Client) -> None:
    record = create(api)
    link = {"path": "s3://ims/recipes/gone/recipe.tar.gz", "etag": "", "type": "s3"}
    assert_problem(api.patch(f"/v3/recipes/{record['id']}", json={"link": link}), 422)
    assert api.get(f"/v3/recipes/{record['id']}").json()["link"] is None


def test_patch_is_atomic(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    """The original applied keys in order, so `arch` changed before the link's 409; ours changes nothing."""
    stored, other = put_recipe(artifact_store), put_recipe(artifact_store)
    record = create(api, link=stored.link)
    url = f"/v3/recipes/{record['id']}"
    assert_problem(api.patch(url, json={"arch": "aarch64", "require_dkms": False, "link": other.link}), 409)
    assert api.get(url).json() == record
    assert_invalid(api.patch(url, json={"arch": "aarch64", "template_dictionary": 5}),
                   {"template_dictionary": ["Not a valid list."]})
    assert api.get(url).json() == record


# --- v2 delete with cascade


@pytest.mark.parametrize(
    ("query", "cascades"),
    [("", True), ("?cascade=true", True), ("?cascade=TRUE", True), ("?cascade=yes", True), ("?cascade=t", True),
     ("?cascade=1", True), ("?cascade=false", False), ("?cascade=no", False), ("?cascade=0", False),
     ("?cascade=anything", False)],
)
def test_v2_delete_cascade(api: httpx.Client, artifact_store: ArtifactStore, query: str, cascades: bool) -> None:
    stored = put_recipe(artifact_store)
    record = create(api, "/v2", link=stored.link)
    assert_no_content(api.delete(f"/v2/recipes/{record['id']}{query}"))
    assert_problem(api.get(f"/v2/recipes/{record['id']}"), 404)
    assert_problem(api.get(f"/v3/deleted/recipes/{record['id']}"), 404)
    if cascades:
        wait_for_objects(artifact_store, RECIPE_BUCKET, absent=[stored.key])
    else:
        assert exists(artifact_store, RECIPE_BUCKET, stored.key)


def test_v2_cascade_with_a_missing_artifact(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    stored = put_recipe(artifact_store)
    record = create(api, "", link=stored.link)
    artifact_store.client.delete_object(Bucket=RECIPE_BUCKET, Key=stored.key)
    assert_no_content(api.delete(f"/recipes/{record['id']}"))
    assert_problem(api.get(f"/recipes/{record['id']}"), 404)


def test_v2_collection_delete_cascades(fresh_api: httpx.Client, artifact_store: ArtifactStore) -> None:
    stored = [put_recipe(artifact_store) for _ in range(2)]
    for item in stored:
        create(fresh_api, "/v2", link=item.link)
    kept = create(fresh_api)
    fresh_api.delete(f"/v3/recipes/{kept['id']}")
    assert_no_content(fresh_api.delete("/v2/recipes"))
    assert fresh_api.get("/v2/recipes").json() == []
    wait_for_objects(artifact_store, RECIPE_BUCKET, absent=[item.key for item in stored])
    assert [r["id"] for r in fresh_api.get("/v3/deleted/recipes").json()] == [kept["id"]]


def test_rename_is_ours(api: httpx.Client) -> None:
    """Ours (docs/compatibility.md): PATCH takes `name`."""
    body = {"name": "before", "recipe_type": "kiwi-ng", "linux_distribution": "sles15"}
    recipe = api.post("/v3/recipes", json=body).json()
    renamed = api.patch(f"/v2/recipes/{recipe['id']}", json={"name": "after"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "after"
    assert api.get(f"/v3/recipes/{recipe['id']}").json()["name"] == "after"
