"""/images under '', /v2 and /v3: fields, metadata, manifest validation, PATCH and the v2 cascade delete."""

from __future__ import annotations

import copy
import uuid
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
from tests.support.s3data import BOOT_BUCKET, StoredImage, exists, put_image, put_manifest, wait_for_objects

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location

FIELDS = {"name", "link", "arch", "metadata", "id", "created"}
MALFORMED = "The image's manifest.json is malformed. "
TAIL = "Determine the specific information that is missing or invalid and then re-run the request with valid information."


def create(api: httpx.Client, prefix: str = "/v3", **fields: Any) -> dict[str, Any]:
    response = api.post(f"{prefix}/images", json={"name": "img", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def image(artifact_store: ArtifactStore) -> StoredImage:
    return put_image(artifact_store)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_create_applies_defaults(api: httpx.Client, prefix: str) -> None:
    body = create(api, prefix)
    assert set(body) == FIELDS
    assert (body["link"], body["arch"], body["metadata"]) == (None, "x86_64", {})
    assert UUID4.match(body["id"]) and TIMESTAMP.match(body["created"])
    for other in PREFIXES:
        assert api.get(f"{other}/images/{body['id']}").json() == body


@pytest.mark.parametrize("prefix", PREFIXES)
def test_create_with_a_valid_manifest(api: httpx.Client, image: StoredImage, prefix: str) -> None:
    body = create(api, prefix, link=image.link, arch="aarch64", metadata={"a": "1"})
    assert body["link"] == image.link
    assert (body["arch"], body["metadata"]) == ("aarch64", {"a": "1"})


@pytest.mark.parametrize(
    ("metadata", "stored"),
    [
        ({"key": "color", "value": "blue"}, {"color": "blue"}),
        # The `{key, value}` form is rewritten; `value` defaults to "" and other members are dropped.
        ({"key": "color"}, {"color": ""}),
        ({"key": "color", "value": "red", "other": "x"}, {"color": "red"}),
        ({"a": "1", "b": "2"}, {"a": "1", "b": "2"}),
        ({}, {}),
    ],
)
def test_create_metadata_forms(api: httpx.Client, metadata: dict[str, Any], stored: dict[str, str]) -> None:
    assert create(api, metadata=metadata)["metadata"] == stored


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"name": ""}, {"name": ["name field must not be blank"]}),
        ({"name": None}, {"name": ["Field may not be null."]}),
        ({"arch": "riscv64"}, {"arch": [ARCH_CHOICES]}),
        ({"metadata": {"k": 1}}, {"metadata": {"k": {"value": ["Not a valid string."]}}}),
        ({"metadata": ["k"]}, {"metadata": ["Not a valid mapping type."]}),
        ({"link": {"path": "s3://boot-images/x", "type": "http"}}, {"link": {"type": ["Type must be one of: s3."]}}),
        ({"link": {"type": "s3"}}, {"link": {"path": [MISSING]}}),
        ({"id": str(uuid.uuid4())}, {"id": [UNKNOWN]}),
        ({"size": 1}, {"size": [UNKNOWN]}),
    ],
)
def test_create_rules(api: httpx.Client, fields: dict[str, Any], errors: dict[str, Any]) -> None:
    assert_invalid(api.post("/v3/images", json={"name": "img", **fields}), errors)


def test_name_is_required(api: httpx.Client) -> None:
    assert_invalid(api.post("/images", json={"arch": "x86_64"}), {"name": [MISSING]})


def test_missing_manifest(api: httpx.Client) -> None:
    link = {"path": f"s3://boot-images/{uuid.uuid4()}/manifest.json", "etag": "", "type": "s3"}
    assert_problem(
        api.post("/v3/images", json={"name": "img", "link": link}),
        422,
        f"The s3 artifact {link!r} cannot be validated. {VALIDATE_TAIL}",
    )


def _manifest_case(store: ArtifactStore, image: StoredImage, change: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(image.manifest)
    body = change(manifest) if callable(change) else change
    return put_manifest(store, S3Location(BOOT_BUCKET, f"{image.image_id}/manifest.json"), body)


def _drop(manifest: dict[str, Any], *path: Any) -> dict[str, Any]:
    target: Any = manifest
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    return manifest


def _set(manifest: dict[str, Any], value: Any, *path: Any) -> dict[str, Any]:
    target: Any = manifest
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return manifest


MANIFEST_422 = [
    ("no version", lambda m: _drop(m, "version"), "The image's manifest.json does not contain a version field."),
    (
        "version 2",
        lambda m: _set(m, "2.0", "version"),
        "The image's manifest.json has a version that is not supported. Supported image manifest versions are: 1.0",
    ),
    ("no artifacts", lambda m: _drop(m, "artifacts"), MALFORMED + "It does not contain an artifacts map."),
    ("artifacts a map", lambda m: _set(m, {}, "artifacts"), MALFORMED + "The artifacts property is not a json list."),
    ("item a string", lambda m: _set(m, "x", "artifacts", 1), MALFORMED + "A listed artifact is not a json dictionary."),
    ("no link", lambda m: _drop(m, "artifacts", 1, "link"), MALFORMED + "An artifact does not have a link value"),
    (
        "no link type",
        lambda m: _drop(m, "artifacts", 1, "link", "type"),
        MALFORMED + "An artifact does not have a link type field",
    ),
    (
        "link type http",
        lambda m: _set(m, "http", "artifacts", 1, "link", "type"),
        MALFORMED + "An artifact link type 'http' not supported",
    ),
    (
        "no link path",
        lambda m: _drop(m, "artifacts", 1, "link", "path"),
        MALFORMED + "An artifact does not have a link path field",
    ),
    ("no type", lambda m: _drop(m, "artifacts", 2, "type"), MALFORMED + "An artifact does not have a type field"),
]


@pytest.mark.parametrize(("case", "change", "detail"), MANIFEST_422, ids=[c[0] for c in MANIFEST_422])
@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_manifest_rules(
    api: httpx.Client, artifact_store: ArtifactStore, image: StoredImage, method: str, case: str, change: Any,
    detail: str,
) -> None:
    link = _manifest_case(artifact_store, image, change)
    if method == "POST":
        response = api.post("/v3/images", json={"name": "img", "link": link})
    else:
        record = create(api)
        response = api.patch(f"/v3/images/{record['id']}", json={"link": link})
        assert api.get(f"/v3/images/{record['id']}").json()["link"] is None
    assert_problem(response, 422, detail)


def test_listed_artifact_must_exist(api: httpx.Client, artifact_store: ArtifactStore, image: StoredImage) -> None:
    kernel = image.manifest["artifacts"][1]["link"]
    artifact_store.client.delete_object(Bucket=BOOT_BUCKET, Key=S3Location.parse(kernel["path"]).key)
    assert_problem(
        api.post("/v3/images", json={"name": "img", "link": image.link}),
        422,
        f"The s3 artifact {kernel!r} cannot be validated. {VALIDATE_TAIL}",
    )


@pytest.mark.parametrize(("count", "what"), [(0, "does not include any rootfs artifacts"),
                                             (2, "includes multiple rootfs artifacts")])
def test_exactly_one_rootfs(
    api: httpx.Client, artifact_store: ArtifactStore, image: StoredImage, count: int, what: str
) -> None:
    def rootfs_count(manifest: dict[str, Any]) -> dict[str, Any]:
        rootfs, others = manifest["artifacts"][0], manifest["artifacts"][1:]
        manifest["artifacts"] = [rootfs] * count + others
        return manifest

    link = _manifest_case(artifact_store, image, rootfs_count)
    repr_link = repr({"path": link["path"], "etag": link["etag"], "type": "s3"})
    assert_problem(
        api.post("/v3/images", json={"name": "img", "link": link}),
        400,
        f"Error reading the manifest.json for IMS {repr_link}. The manifest {what}. {TAIL}",
    )


@pytest.mark.parametrize("falsy", [{}, [], None])
def test_falsy_manifest_is_accepted(
    api: httpx.Client, artifact_store: ArtifactStore, image: StoredImage, falsy: Any
) -> None:
    link = _manifest_case(artifact_store, image, falsy)
    assert create(api, link=link)["link"] == link


def test_manifest_size_limit(api: httpx.Client, artifact_store: ArtifactStore, image: StoredImage) -> None:
    padded = dict(image.manifest, padding="x" * (1024 * 1024))
    link = _manifest_case(artifact_store, image, padded)
    assert_problem(
        api.post("/v3/images", json={"name": "img", "link": link}),
        400,
        f"Image manifest file is larger than the expected maximum size of 1048576 bytes. {TAIL}",
    )


@pytest.mark.parametrize("prefix", PREFIXES)
def test_unreadable_manifest_is_422(api: httpx.Client, artifact_store: ArtifactStore, prefix: str) -> None:
    """The original gave 500 on POST and v2 PATCH and stored the link on v3 PATCH; ours always refuses with 422."""
    location = S3Location(BOOT_BUCKET, f"{uuid.uuid4()}/manifest.json")
    etag = artifact_store.put_bytes(location, b"\xff not json", "application/json")
    link = {"path": location.url, "etag": etag, "type": "s3"}
    response = api.post(f"{prefix}/images", json={"name": "img", "link": link})
    assert response.status_code == 422
    assert response.json()["detail"].startswith(f"Unable to read manifest file {location.url}")
    record = create(api, prefix)
    assert api.patch(f"{prefix}/images/{record['id']}", json={"link": link}).status_code == 422
    assert api.get(f"{prefix}/images/{record['id']}").json()["link"] is None


@pytest.mark.parametrize("prefix", PREFIXES)
def test_link_paths_are_unique_among_active_images(
    api: httpx.Client, image: StoredImage, prefix: str
) -> None:
    first = create(api, link=image.link)
    expected = (
        f"The link path {image.link['path']} matches the link path for the IMS image record {first['id']}. The link "
        f"value must be unique for each IMS image record. {TAIL}"
    )
    assert_problem(api.post(f"{prefix}/images", json={"name": "img", "link": image.link}), 422, expected)
    other = create(api)
    assert_problem(api.patch(f"{prefix}/images/{other['id']}", json={"link": image.link}), 422, expected)


# --- PATCH


@pytest.mark.parametrize("prefix", PREFIXES)
def test_patch_arch_and_link(api: httpx.Client, image: StoredImage, prefix: str) -> None:
    record = create(api)
    response = api.patch(f"{prefix}/images/{record['id']}", json={"arch": "aarch64", "link": image.link})
    assert response.status_code == 200
    assert response.json() == {**record, "arch": "aarch64", "link": image.link}
    assert api.get(f"/v3/images/{record['id']}").json() == response.json()


def test_patch_metadata(api: httpx.Client) -> None:
    record = create(api, metadata={"keep": "1"})
    url = f"/v3/images/{record['id']}"

    def patch(operation: dict[str, Any]) -> dict[str, str]:
        response = api.patch(url, json={"metadata": operation})
        assert response.status_code == 200, response.text
        result: dict[str, str] = response.json()["metadata"]
        return result

    assert patch({"operation": "set", "key": "a", "value": "x"}) == {"keep": "1", "a": "x"}
    assert patch({"operation": "set", "key": "a", "value": "y"}) == {"keep": "1", "a": "y"}
    assert patch({"operation": "set", "key": "b"}) == {"keep": "1", "a": "y", "b": ""}
    assert patch({"operation": "remove", "key": "a"}) == {"keep": "1", "b": ""}
    assert patch({"operation": "remove", "key": "never-there"}) == {"keep": "1", "b": ""}
    assert api.get(url).json()["metadata"] == {"keep": "1", "b": ""}


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"created": "x"}, {"created": [UNKNOWN]}),
        ({"link": None}, {"link": ["Field may not be null."]}),
        ({"arch": "x86"}, {"arch": [ARCH_CHOICES]}),
        ({"metadata": {"operation": "add", "key": "a"}}, {"metadata": {"operation": ["Must be one of: set, remove."]}}),
        ({"metadata": {"key": "a"}}, {"metadata": {"operation": [MISSING]}}),
        ({"metadata": {"operation": "set"}}, {"metadata": {"key": [MISSING]}}),
        ({"metadata": {"operation": "set", "key": "a", "extra": 1}}, {"metadata": {"extra": [UNKNOWN]}}),
        ({"metadata": {"operation": "set", "key": "a", "value": 1}}, {"metadata": {"value": ["Not a valid string."]}}),
    ],
)
def test_patch_rules(api: httpx.Client, body: dict[str, Any], errors: dict[str, Any]) -> None:
    record = create(api)
    assert_invalid(api.patch(f"/v3/images/{record['id']}", json=body), errors)
    assert api.get(f"/v3/images/{record['id']}").json() == record


def test_patch_checks_the_id_before_the_body(api: httpx.Client) -> None:
    assert_problem(api.patch("/v2/images/nope", json={"bogus": 1}), 404, NOT_FOUND)


def test_patch_link_conflicts(api: httpx.Client, artifact_store: ArtifactStore, image: StoredImage) -> None:
    other = put_image(artifact_store)
    record = create(api, link=image.link)
    url = f"/v3/images/{record['id']}"
    assert api.patch(url, json={"link": image.link}).status_code == 200
    assert_problem(api.patch(url, json={"link": other.link}), 409, CONFLICT)
    # Atomic: nothing of a refused PATCH is applied (the original had already changed `arch` by then).
    assert_problem(api.patch(url, json={"arch": "aarch64", "metadata": {"operation": "set", "key": "k"},
                                        "link": other.link}), 409)
    assert api.get(url).json() == record


# --- v2 delete with cascade


@pytest.mark.parametrize("prefix", ["", "/v2"])
def test_v2_cascade_deletes_every_artifact(
    api: httpx.Client, artifact_store: ArtifactStore, image: StoredImage, prefix: str
) -> None:
    record = create(api, prefix, link=image.link)
    assert_no_content(api.delete(f"{prefix}/images/{record['id']}"))
    assert_problem(api.get(f"{prefix}/images/{record['id']}"), 404)
    assert_problem(api.get(f"/v3/deleted/images/{record['id']}"), 404)
    wait_for_objects(artifact_store, BOOT_BUCKET, absent=image.keys)


def test_v2_delete_without_cascade_keeps_artifacts(
    api: httpx.Client, artifact_store: ArtifactStore, image: StoredImage
) -> None:
    record = create(api, "/v2", link=image.link)
    assert_no_content(api.delete(f"/v2/images/{record['id']}", params={"cascade": "False"}))
    assert_problem(api.get(f"/v2/images/{record['id']}"), 404)
    assert all(exists(artifact_store, BOOT_BUCKET, key) for key in image.keys)


def test_v2_cascade_with_a_missing_manifest_deletes_the_record(
    api: httpx.Client, artifact_store: ArtifactStore, image: StoredImage
) -> None:
    """The original answered 500 and kept the record; ours deletes the record (the artifacts the lost manifest
    listed cannot be found any more and stay where they are)."""
    record = create(api, "/v2", link=image.link)
    artifact_store.client.delete_object(Bucket=BOOT_BUCKET, Key=image.manifest_key)
    assert_no_content(api.delete(f"/v2/images/{record['id']}"))
    assert_problem(api.get(f"/v2/images/{record['id']}"), 404)


def test_v2_collection_delete(fresh_api: httpx.Client, artifact_store: ArtifactStore) -> None:
    images = [put_image(artifact_store) for _ in range(2)]
    for stored in images:
        create(fresh_api, "/v2", link=stored.link)
    create(fresh_api, "/v2")
    assert_no_content(fresh_api.delete("/images"))
    assert fresh_api.get("/images").json() == []
    wait_for_objects(artifact_store, BOOT_BUCKET, absent=[key for stored in images for key in stored.keys])


def test_rename_is_ours_and_atomic(api: httpx.Client) -> None:
    """Ours (docs/compatibility.md): PATCH takes `name`; a blank one is refused and changes nothing."""
    image = api.post("/v3/images", json={"name": "before"}).json()
    renamed = api.patch(f"/v3/images/{image['id']}", json={"name": "after", "arch": "aarch64"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "after"
    refused = api.patch(f"/v3/images/{image['id']}", json={"name": "", "arch": "x86_64"})
    assert refused.status_code == 422
    assert refused.json()["errors"] == {"name": ["name field must not be blank"]}
    assert api.get(f"/images/{image['id']}").json() == renamed.json()
