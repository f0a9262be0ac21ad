"""v3 soft delete → /v3/deleted → undelete → purge, with the real S3 keys the original uses.

The S3 moves run as background tasks after the request returns, so every S3 check polls until it settles.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import httpx
import pytest
from tests.support.contract import (
    MISSING,
    NO_INPUT,
    NOT_FOUND,
    TIMESTAMP,
    UNKNOWN,
    VALIDATE_TAIL,
    assert_invalid,
    assert_no_content,
    assert_problem,
)
from tests.support.s3data import (
    BOOT_BUCKET,
    RECIPE_BUCKET,
    exists,
    keys_under,
    put_recipe,
    register_image,
    wait_for,
    wait_for_objects,
)

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location

UNDELETE = {"operation": "undelete"}
MIME_MANIFEST = "application/vnd.cray.image.manifest"
TAIL = "Determine the specific information that is missing or invalid and then re-run the request with valid information."


def new_recipe(api: httpx.Client, store: ArtifactStore) -> dict[str, Any]:
    record = api.post(
        "/v3/recipes",
        json={"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15", "arch": "aarch64",
              "require_dkms": False, "template_dictionary": [{"key": "a", "value": "b"}]},
    ).json()
    stored = put_recipe(store, recipe_id=record["id"])
    response = api.patch(f"/v3/recipes/{record['id']}", json={"link": stored.link})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def deleted_manifest_key(image_id: str) -> str:
    return f"deleted/{image_id}/deleted_manifest.json"


def read_deleted_manifest(store: ArtifactStore, image_id: str) -> dict[str, Any]:
    result: dict[str, Any] = store.read_json(S3Location(BOOT_BUCKET, deleted_manifest_key(image_id)))
    return result


def without_deleted(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "deleted"}


# --- images


def test_image_soft_delete_moves_everything_under_deleted(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    record, stored = register_image(api, artifact_store)
    image_id = record["id"]
    assert_no_content(api.delete(f"/v3/images/{image_id}"))
    assert_problem(api.get(f"/v3/images/{image_id}"), 404, NOT_FOUND)

    deleted = api.get(f"/v3/deleted/images/{image_id}").json()
    assert set(deleted) == {"name", "link", "arch", "metadata", "id", "created", "deleted"}
    assert deleted["link"] == {
        "path": f"s3://boot-images/deleted/{image_id}/deleted_manifest.json", "etag": "", "type": "s3"
    }
    assert {k: deleted[k] for k in ("name", "arch", "metadata", "id", "created")} == {
        k: record[k] for k in ("name", "arch", "metadata", "id", "created")
    }
    assert TIMESTAMP.match(deleted["deleted"])
    assert deleted in api.get("/v3/deleted/images").json()

    wait_for_objects(artifact_store, BOOT_BUCKET, present=[deleted_manifest_key(image_id)])
    assert keys_under(artifact_store, BOOT_BUCKET, f"{image_id}/") == set()
    assert keys_under(artifact_store, BOOT_BUCKET, f"deleted/{image_id}/") == {
        f"deleted/{image_id}/{name}" for name in ("rootfs", "kernel", "initrd", "manifest.json",
                                                  "deleted_manifest.json")
    }

    manifest = read_deleted_manifest(artifact_store, image_id)
    assert set(manifest) == {"version", "created", "artifacts"}
    assert manifest["version"] == "1.0"
    created = datetime.strptime(manifest["created"], "%Y-%m-%d %H:%M:%S")
    assert abs((created - datetime.fromisoformat(deleted["deleted"])).total_seconds()) < 2
    # Entries: the manifest's artifacts in its order, then the moved manifest itself (no md5 on that one).
    expected = [
        {"type": entry["type"], "md5": entry["md5"], "link": {"path": f"s3://boot-images/deleted/{key}", "type": "s3"}}
        for entry, key in zip(stored.manifest["artifacts"], stored.artifact_keys, strict=True)
    ]
    expected.append({"type": MIME_MANIFEST, "link": {"path": f"s3://boot-images/deleted/{image_id}/manifest.json",
                                                     "type": "s3"}})
    entries = manifest["artifacts"]
    assert [{**e, "link": {k: v for k, v in e["link"].items() if k != "etag"}} for e in entries] == expected
    for entry in entries:
        moved = artifact_store.head(S3Location.parse(entry["link"]["path"]))
        assert moved is not None and entry["link"]["etag"] == moved.etag
    assert [e["md5"] for e in entries[:3]] == [e["md5"] for e in stored.manifest["artifacts"]]


def test_image_undelete_brings_everything_back(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    record, stored = register_image(api, artifact_store)
    image_id = record["id"]
    api.delete(f"/v3/images/{image_id}")
    wait_for_objects(artifact_store, BOOT_BUCKET, present=[deleted_manifest_key(image_id)])

    assert_no_content(api.patch(f"/v3/deleted/images/{image_id}", json=UNDELETE))
    assert api.get(f"/v3/images/{image_id}").json() == record
    assert_problem(api.get(f"/v3/deleted/images/{image_id}"), 404)
    wait_for(lambda: not keys_under(artifact_store, BOOT_BUCKET, f"deleted/{image_id}/"), what="deleted/ emptied")
    assert keys_under(artifact_store, BOOT_BUCKET, f"{image_id}/") == set(stored.keys)
    # The restored objects pass the manifest checks again (a new record takes the link once it is free).
    assert_no_content(api.delete(f"/v2/images/{image_id}", params={"cascade": "false"}))
    assert api.post("/v3/images", json={"name": "again", "link": stored.link}).status_code == 201


def test_image_purge_removes_every_object(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    record, _ = register_image(api, artifact_store)
    image_id = record["id"]
    api.delete(f"/v3/images/{image_id}")
    wait_for_objects(artifact_store, BOOT_BUCKET, present=[deleted_manifest_key(image_id)])
    assert_no_content(api.delete(f"/v3/deleted/images/{image_id}"))
    assert_problem(api.get(f"/v3/deleted/images/{image_id}"), 404)
    assert_problem(api.get(f"/v3/images/{image_id}"), 404)
    wait_for(lambda: not keys_under(artifact_store, BOOT_BUCKET, f"deleted/{image_id}/"), what="purge")
    assert keys_under(artifact_store, BOOT_BUCKET, f"{image_id}/") == set()


def test_undelete_and_purge_queue_behind_a_running_move(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    """Requests right after the DELETE do not wait for its move; the work runs in order per record."""
    restored, stored = register_image(api, artifact_store)
    purged, _ = register_image(api, artifact_store)
    for image_id in (restored["id"], purged["id"]):
        assert_no_content(api.delete(f"/v3/images/{image_id}"))
    assert_no_content(api.patch(f"/v3/deleted/images/{restored['id']}", json=UNDELETE))
    assert_no_content(api.delete(f"/v3/deleted/images/{purged['id']}"))
    assert api.get(f"/v3/images/{restored['id']}").json() == restored

    def settled() -> bool:
        return (
            keys_under(artifact_store, BOOT_BUCKET, f"{restored['id']}/") == set(stored.keys)
            and not keys_under(artifact_store, BOOT_BUCKET, f"deleted/{restored['id']}/")
            and not keys_under(artifact_store, BOOT_BUCKET, f"{purged['id']}/")
            and not keys_under(artifact_store, BOOT_BUCKET, f"deleted/{purged['id']}/")
        )

    wait_for(settled, what="the queued moves")


def test_artifacts_without_md5_are_kept(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    """The original moved them but left them out of deleted_manifest.json, orphaning them; ours lists them."""
    record, _ = register_image(api, artifact_store, without_md5=["kernel"])
    image_id = record["id"]
    api.delete(f"/v3/images/{image_id}")
    wait_for_objects(artifact_store, BOOT_BUCKET, present=[deleted_manifest_key(image_id)])
    entries = read_deleted_manifest(artifact_store, image_id)["artifacts"]
    kernel = [e for e in entries if e["link"]["path"].endswith("/kernel")]
    assert len(kernel) == 1 and "md5" not in kernel[0]
    api.patch(f"/v3/deleted/images/{image_id}", json=UNDELETE)
    wait_for_objects(artifact_store, BOOT_BUCKET, present=[f"{image_id}/kernel"],
                     absent=[f"deleted/{image_id}/kernel", deleted_manifest_key(image_id)])


def test_deleted_manifest_goes_to_the_boot_images_bucket(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    record, stored = register_image(api, artifact_store, bucket=RECIPE_BUCKET)
    image_id = record["id"]
    api.delete(f"/v3/images/{image_id}")
    wait_for_objects(artifact_store, BOOT_BUCKET, present=[deleted_manifest_key(image_id)])
    assert keys_under(artifact_store, RECIPE_BUCKET, f"deleted/{image_id}/") == {f"deleted/{k}" for k in stored.keys}
    api.patch(f"/v3/deleted/images/{image_id}", json=UNDELETE)
    wait_for_objects(artifact_store, RECIPE_BUCKET, present=stored.keys)
    wait_for_objects(artifact_store, BOOT_BUCKET, absent=[deleted_manifest_key(image_id)])


def test_image_without_link(api: httpx.Client) -> None:
    record = api.post("/v3/images", json={"name": "bare"}).json()
    assert_no_content(api.delete(f"/v3/images/{record['id']}"))
    assert api.get(f"/v3/deleted/images/{record['id']}").json()["link"] is None
    assert_no_content(api.patch(f"/v3/deleted/images/{record['id']}", json=UNDELETE))
    assert api.get(f"/v3/images/{record['id']}").json() == record


def test_image_with_a_lost_manifest(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    """Soft delete never fails on S3: the record moves and keeps its link. Undelete then restores the record as
    it was (the original answered 422 because it could not read the manifest)."""
    record, stored = register_image(api, artifact_store)
    artifact_store.client.delete_object(Bucket=BOOT_BUCKET, Key=stored.manifest_key)
    assert_no_content(api.delete(f"/v3/images/{record['id']}"))
    wait_for(lambda: api.get(f"/v3/deleted/images/{record['id']}").json()["link"] == record["link"],
             what="the original link to come back")
    assert exists(artifact_store, BOOT_BUCKET, f"{record['id']}/rootfs")
    assert_no_content(api.patch(f"/v3/deleted/images/{record['id']}", json=UNDELETE))
    assert api.get(f"/v3/images/{record['id']}").json() == record


def test_undelete_needs_the_deleted_manifest(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    record, _ = register_image(api, artifact_store)
    image_id = record["id"]
    api.delete(f"/v3/images/{image_id}")
    wait_for_objects(artifact_store, BOOT_BUCKET, present=[deleted_manifest_key(image_id)])
    artifact_store.client.delete_object(Bucket=BOOT_BUCKET, Key=deleted_manifest_key(image_id))
    path = f"s3://boot-images/{deleted_manifest_key(image_id)}"
    assert_problem(api.patch(f"/v3/deleted/images/{image_id}", json=UNDELETE), 422,
                   f"Unable to read manifest file {path}. {TAIL}")
    assert api.get(f"/v3/deleted/images/{image_id}").status_code == 200
    assert_problem(api.get(f"/v3/images/{image_id}"), 404)


# --- recipes


def test_recipe_lifecycle(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    record = new_recipe(api, artifact_store)
    recipe_id = record["id"]
    key = f"recipes/{recipe_id}/recipe.tar.gz"
    assert_no_content(api.delete(f"/v3/recipes/{recipe_id}"))
    assert_problem(api.get(f"/v3/recipes/{recipe_id}"), 404)

    deleted = api.get(f"/v3/deleted/recipes/{recipe_id}").json()
    # The soft-delete copy keeps arch, require_dkms, template_dictionary and created (CASMCMS-9363/9396).
    assert without_deleted({**deleted, "link": None}) == {**record, "link": None}
    assert deleted["link"]["path"] == f"s3://ims/deleted/{key}"
    assert deleted["link"]["type"] == "s3"
    wait_for_objects(artifact_store, RECIPE_BUCKET, present=[f"deleted/{key}"], absent=[key])
    moved = artifact_store.head(S3Location(RECIPE_BUCKET, f"deleted/{key}"))
    assert moved is not None
    # The renamed link carries the new object's etag once the move is done.
    wait_for(lambda: api.get(f"/v3/deleted/recipes/{recipe_id}").json()["link"]["etag"] == moved.etag,
             what="the etag of the moved recipe")

    assert_no_content(api.patch(f"/v3/deleted/recipes/{recipe_id}", json=UNDELETE))
    restored = api.get(f"/v3/recipes/{recipe_id}").json()
    assert {**restored, "link": None} == {**record, "link": None}
    assert restored["link"]["path"] == f"s3://ims/{key}"
    wait_for_objects(artifact_store, RECIPE_BUCKET, present=[key], absent=[f"deleted/{key}"])

    api.delete(f"/v3/recipes/{recipe_id}")
    assert_no_content(api.delete(f"/v3/deleted/recipes/{recipe_id}"))
    assert_problem(api.get(f"/v3/deleted/recipes/{recipe_id}"), 404)
    wait_for_objects(artifact_store, RECIPE_BUCKET, absent=[key, f"deleted/{key}"])


def test_recipe_undelete_needs_its_artifact(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    record = new_recipe(api, artifact_store)
    key = f"deleted/recipes/{record['id']}/recipe.tar.gz"
    api.delete(f"/v3/recipes/{record['id']}")
    wait_for_objects(artifact_store, RECIPE_BUCKET, present=[key])
    wait_for(lambda: api.get(f"/v3/deleted/recipes/{record['id']}").json()["link"]["etag"], what="etag")
    link = api.get(f"/v3/deleted/recipes/{record['id']}").json()["link"]
    artifact_store.client.delete_object(Bucket=RECIPE_BUCKET, Key=key)
    assert_problem(api.patch(f"/v3/deleted/recipes/{record['id']}", json=UNDELETE), 422,
                   f"The s3 artifact {link!r} cannot be validated. {VALIDATE_TAIL}")
    assert api.get(f"/v3/deleted/recipes/{record['id']}").status_code == 200


def test_deleted_links_do_not_block_reuse(api: httpx.Client, artifact_store: ArtifactStore) -> None:
    """Uniqueness is checked among active records only."""
    record = new_recipe(api, artifact_store)
    stored_path = record["link"]["path"]
    api.delete(f"/v3/recipes/{record['id']}")
    key = S3Location.parse(stored_path).key
    wait_for_objects(artifact_store, RECIPE_BUCKET, absent=[key])
    fresh = put_recipe(artifact_store, recipe_id=record["id"])
    response = api.post("/v3/recipes", json={"name": "again", "recipe_type": "kiwi-ng",
                                             "linux_distribution": "sles15", "link": fresh.link})
    assert response.status_code == 201, response.text


# --- the undelete body and unknown ids


@pytest.mark.parametrize("kind", ["public-keys", "recipes", "images"])
def test_undelete_body_rules(api: httpx.Client, kind: str) -> None:
    body = {"name": "x", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"} if kind == "public-keys" else {"name": "x"}
    if kind == "recipes":
        body.update(recipe_type="kiwi-ng", linux_distribution="sles15")
    record = api.post(f"/v3/{kind}", json=body).json()
    api.delete(f"/v3/{kind}/{record['id']}")
    for url in (f"/v3/deleted/{kind}/{record['id']}", f"/v3/deleted/{kind}"):
        assert_problem(api.patch(url, json={}), 400, NO_INPUT)
        # The same text for every kind (sic in the original).
        assert_invalid(api.patch(url, json={"operation": "restore"}),
                       {"operation": ["Recipe type must be one of: undelete."]})
        assert_invalid(api.patch(url, json={"operation": "undelete", "force": True}), {"force": [UNKNOWN]})
        assert_invalid(api.patch(url, json={"force": True}), {"force": [UNKNOWN], "operation": [MISSING]})
        assert api.patch(url, content=b"", headers={"content-type": "application/json"}).status_code == 400
    assert api.get(f"/v3/deleted/{kind}/{record['id']}").status_code == 200


@pytest.mark.parametrize("kind", ["public-keys", "recipes", "images"])
def test_deleted_unknown_ids(api: httpx.Client, kind: str) -> None:
    active = api.post("/v3/public-keys", json={"name": "a", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"}).json()["id"]
    for record_id in ("missing", active if kind == "public-keys" else "00000000-0000-4000-8000-000000000000"):
        assert_problem(api.get(f"/v3/deleted/{kind}/{record_id}"), 404, NOT_FOUND)
        assert_problem(api.patch(f"/v3/deleted/{kind}/{record_id}", json=UNDELETE), 404, NOT_FOUND)
        assert_problem(api.delete(f"/v3/deleted/{kind}/{record_id}"), 404, NOT_FOUND)
    assert api.get(f"/v3/public-keys/{active}").status_code == 200


@pytest.mark.parametrize("path", ["/deleted/images", "/v2/deleted/images", "/deleted/recipes/x"])
def test_deleted_exists_only_under_v3(api: httpx.Client, path: str) -> None:
    assert_problem(api.get(path), 404)


# --- collections (each on a server of its own)


def test_collection_soft_delete_undelete_purge(fresh_api: httpx.Client, artifact_store: ArtifactStore) -> None:
    images = [register_image(fresh_api, artifact_store) for _ in range(2)]
    recipe = new_recipe(fresh_api, artifact_store)
    bare = fresh_api.post("/v3/images", json={"name": "bare"}).json()
    assert_no_content(fresh_api.delete("/v3/images"))
    assert_no_content(fresh_api.delete("/v3/recipes"))
    assert fresh_api.get("/v3/images").json() == []
    assert len(fresh_api.get("/v3/deleted/images").json()) == 3
    wait_for_objects(artifact_store, BOOT_BUCKET, present=[deleted_manifest_key(r["id"]) for r, _ in images])

    assert_no_content(fresh_api.patch("/v3/deleted/images", json=UNDELETE))
    assert fresh_api.get("/v3/deleted/images").json() == []
    assert sorted(r["id"] for r in fresh_api.get("/v3/images").json()) == sorted(
        [r["id"] for r, _ in images] + [bare["id"]]
    )
    wait_for_objects(artifact_store, BOOT_BUCKET, present=[k for _, s in images for k in s.keys],
                     absent=[deleted_manifest_key(r["id"]) for r, _ in images])

    fresh_api.delete("/v3/images")
    assert_no_content(fresh_api.delete("/v3/deleted/images"))
    assert_no_content(fresh_api.delete("/v3/deleted/recipes"))
    assert fresh_api.get("/v3/deleted/images").json() == []
    assert fresh_api.get("/v3/deleted/recipes").json() == []
    wait_for(
        lambda: all(
            not keys_under(artifact_store, BOOT_BUCKET, prefix)
            for r, _ in images
            for prefix in (f"{r['id']}/", f"deleted/{r['id']}/")
        ),
        what="purged images",
    )
    wait_for_objects(artifact_store, RECIPE_BUCKET, absent=[f"deleted/recipes/{recipe['id']}/recipe.tar.gz"])


def test_collection_undelete_is_all_or_nothing(fresh_api: httpx.Client, artifact_store: ArtifactStore) -> None:
    """The original returned the 422 part-way, leaving earlier records in both tables; ours undeletes none."""
    first, second = new_recipe(fresh_api, artifact_store), new_recipe(fresh_api, artifact_store)
    fresh_api.delete("/v3/recipes")
    for record in (first, second):
        wait_for(lambda r=record: fresh_api.get(f"/v3/deleted/recipes/{r['id']}").json()["link"]["etag"],
                 what="moves")
    key = f"deleted/recipes/{second['id']}/recipe.tar.gz"
    wait_for_objects(artifact_store, RECIPE_BUCKET, present=[key])
    artifact_store.client.delete_object(Bucket=RECIPE_BUCKET, Key=key)
    assert_problem(fresh_api.patch("/v3/deleted/recipes", json=UNDELETE), 422)
    assert fresh_api.get("/v3/recipes").json() == []
    assert len(fresh_api.get("/v3/deleted/recipes").json()) == 2
    assert exists(artifact_store, RECIPE_BUCKET, f"deleted/recipes/{first['id']}/recipe.tar.gz")


def test_public_key_collections(fresh_api: httpx.Client) -> None:
    keys = [fresh_api.post("/v3/public-keys", json={"name": f"k{i}", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"}).json()
            for i in range(3)]
    fresh_api.delete("/v3/public-keys")
    assert_no_content(fresh_api.patch("/v3/deleted/public-keys", json=UNDELETE))
    assert fresh_api.get("/v3/public-keys").json() == keys
    fresh_api.delete("/v3/public-keys")
    assert_no_content(fresh_api.delete("/v3/deleted/public-keys"))
    assert fresh_api.get("/v3/deleted/public-keys").json() == []
    assert fresh_api.get("/v3/public-keys").json() == []


def test_deleted_timestamps(api: httpx.Client) -> None:
    record = api.post("/v3/public-keys", json={"name": "t", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"}).json()
    api.delete(f"/v3/public-keys/{record['id']}")
    deleted = api.get(f"/v3/deleted/public-keys/{record['id']}").json()["deleted"]
    assert re.match(r"^\d{4}-\d{2}-\d{2}T", deleted) and "+" not in deleted and not deleted.endswith("Z")
