"""/jobs under '', /v2 and /v3: every field, default and error of the original's job API, plus our additions.

The server here runs no job worker (IMS_RUN_WORKERS=false): jobs stay `creating`, so the records are
exactly what POST made. Running jobs are tested in tests/jobs/.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.contract import (
    BAD_JSON,
    MISSING,
    NO_INPUT,
    NOT_FOUND,
    NOT_JSON,
    PREFIXES,
    TIMESTAMP,
    UNKNOWN,
    UUID4,
    assert_invalid,
    assert_message,
    assert_no_content,
    assert_problem,
)
from tests.support.s3data import StoredImage, put_image, put_manifest, put_recipe
from tests.support.servers import ImsServer, start_ims_server

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location, make_link

TAIL = (
    "Determine the specific information that is missing or invalid and then re-run the request with valid information."
)
PLEASE = "Please determine the specific information that is missing or invalid and then re-run the request with valid information."
STATUSES = (
    "creating",
    "fetching_image",
    "fetching_recipe",
    "waiting_for_repos",
    "building_image",
    "packaging_artifacts",
    "waiting_on_user",
    "error",
    "success",
)
# The original's 24 keys (its tests/v3/test_v3_jobs.py) plus ours: status_reason.
FIELDS = {
    "created",
    "job_type",
    "artifact_id",
    "build_env_size",
    "id",
    "enable_debug",
    "public_key_id",
    "kubernetes_job",
    "kubernetes_service",
    "kubernetes_configmap",
    "ssh_containers",
    "status",
    "image_root_archive_name",
    "initrd_file_name",
    "kernel_file_name",
    "resultant_image_id",
    "kubernetes_namespace",
    "kernel_parameters_file_name",
    "arch",
    "require_dkms",
    "kubernetes_pvc",
    "job_mem_size",
    "remote_build_node",
    "kubernetes_secret",
    "status_reason",
}
SSH_PORTS = (21000, 21099)


def _server(work_root: Path, s3_env: dict[str, str], **extra: str) -> ImsServer:
    env = {"IMS_RUN_WORKERS": "false", "IMS_JOB_SSH_PORTS": f"{SSH_PORTS[0]}-{SSH_PORTS[1]}", **extra}
    return start_ims_server(work_root / f"ims-jobs-api-{uuid.uuid4().hex[:8]}", s3_env, env)


@pytest.fixture(scope="module")
def server(work_root: Path, s3_env: dict[str, str]) -> Iterator[ImsServer]:
    started = _server(work_root, s3_env)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def api(server: ImsServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def key_id(api: httpx.Client) -> str:
    response = api.post("/v3/public-keys", json={"name": "k", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"})
    assert response.status_code == 201
    return str(response.json()["id"])


def image_record(api: httpx.Client, link: dict[str, Any] | None, arch: str = "x86_64") -> str:
    response = api.post("/v3/images", json={"name": "img", "link": link, "arch": arch})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def image_id(api: httpx.Client, artifact_store: ArtifactStore) -> str:
    return image_record(api, put_image(artifact_store).link)


def recipe_record(api: httpx.Client, store: ArtifactStore, **fields: Any) -> str:
    body = {"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15", "link": put_recipe(store).link}
    response = api.post("/v3/recipes", json={**body, **fields})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def post(api: httpx.Client, prefix: str = "/v3", **fields: Any) -> httpx.Response:
    return api.post(f"{prefix}/jobs", json=fields)


def customize(api: httpx.Client, image_id: str, key_id: str, prefix: str = "/v3", **fields: Any) -> dict[str, Any]:
    body = {
        "job_type": "customize",
        "artifact_id": image_id,
        "public_key_id": key_id,
        "image_root_archive_name": "new-image",
        **fields,
    }
    response = post(api, prefix, **body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def create_job(api: httpx.Client, recipe_id: str, key_id: str, **fields: Any) -> dict[str, Any]:
    body = {
        "job_type": "create",
        "artifact_id": recipe_id,
        "public_key_id": key_id,
        "image_root_archive_name": "built",
        **fields,
    }
    response = post(api, **body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def launch_data(server: ImsServer, job_id: str) -> dict[str, Any]:
    """What the worker will get for the job (peeked at in the database, read-only)."""
    with sqlite3.connect(f"file:{server.data_dir / 'ims.sqlite3'}?mode=ro", uri=True) as conn:
        (launch,) = conn.execute("SELECT launch FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return dict(json.loads(launch))


# --- POST: the record


@pytest.mark.parametrize("prefix", PREFIXES)
def test_customize_record_and_defaults(api: httpx.Client, image_id: str, key_id: str, prefix: str) -> None:
    job = customize(api, image_id, key_id, prefix)
    job_id = job["id"]
    assert set(job) == FIELDS
    assert UUID4.match(job_id) and TIMESTAMP.match(job["created"])
    assert {k: job[k] for k in ("job_type", "artifact_id", "public_key_id", "image_root_archive_name")} == {
        "job_type": "customize",
        "artifact_id": image_id,
        "public_key_id": key_id,
        "image_root_archive_name": "new-image",
    }
    assert job["status"] == "creating" and job["status_reason"] is None
    assert (job["enable_debug"], job["build_env_size"], job["job_mem_size"]) == (False, 60, 8)
    assert (job["kernel_file_name"], job["initrd_file_name"], job["kernel_parameters_file_name"]) == (
        "vmlinuz",
        "initrd",
        "kernel-parameters",
    )
    assert job["arch"] == "x86_64"
    assert job["require_dkms"] is True  # JOB_ENABLE_DKMS defaults to true
    assert job["resultant_image_id"] is None and job["remote_build_node"] == ""
    assert job["kubernetes_job"] == f"cray-ims-{job_id}-customize"
    assert job["kubernetes_service"] == f"cray-ims-{job_id}-service"
    assert job["kubernetes_configmap"] == f"cray-ims-{job_id}-configmap"
    assert job["kubernetes_pvc"] == f"cray-ims-{job_id}-job-claim"
    assert job["kubernetes_secret"] == f"cray-ims-{job_id}-signing-keys"
    assert job["kubernetes_namespace"] == "ims"
    (container,) = job["ssh_containers"]
    assert set(container) == {"name", "jail", "status", "connection_info"}
    assert (container["name"], container["jail"], container["status"]) == ("customize", False, "pending")
    # Ours: both entries name the address and port where this job's sshd really answers.
    access = container["connection_info"]["customer_access"]
    assert access["host"] == "127.0.0.1" and SSH_PORTS[0] <= access["port"] <= SSH_PORTS[1]
    assert container["connection_info"]["cluster.local"] == access
    for other in PREFIXES:
        assert api.get(f"{other}/jobs/{job_id}").json() == job


def test_customize_keeps_given_values(api: httpx.Client, image_id: str, key_id: str) -> None:
    fields = {
        "enable_debug": True,
        "build_env_size": 5,
        "job_mem_size": 2,
        "kernel_file_name": "vmlinuz-6.1",
        "initrd_file_name": "initrd.img",
        "kernel_parameters_file_name": "params",
        "require_dkms": False,
        "ssh_containers": [{"name": "cfs-session", "jail": True}],
    }
    job = customize(api, image_id, key_id, **fields)
    assert {k: job[k] for k in fields if k != "ssh_containers"} == {
        k: v for k, v in fields.items() if k != "ssh_containers"
    }
    (container,) = job["ssh_containers"]
    assert (container["name"], container["jail"]) == ("cfs-session", True)


def test_ssh_container_rules(api: httpx.Client, image_id: str, key_id: str) -> None:
    # A container without a name keeps no name; an empty list becomes the default container.
    (unnamed,) = customize(api, image_id, key_id, ssh_containers=[{"jail": True}])["ssh_containers"]
    assert "name" not in unnamed and unnamed["jail"] is True
    assert customize(api, image_id, key_id, ssh_containers=[])["ssh_containers"][0]["name"] == "customize"
    assert customize(api, image_id, key_id, ssh_containers=None)["ssh_containers"][0]["name"] == "customize"
    two = post(
        api,
        job_type="customize",
        artifact_id=image_id,
        public_key_id=key_id,
        image_root_archive_name="x",
        ssh_containers=[{"name": "a"}, {"name": "b"}],
    )
    assert_problem(
        two,
        400,
        "Only one SSH container is currently supported. Please remove additional containers, "
        "determine the specific information that is missing or invalid and then re-run the request with "
        "valid information.",
    )
    extra = post(
        api,
        job_type="customize",
        artifact_id=image_id,
        public_key_id=key_id,
        image_root_archive_name="x",
        ssh_containers=[{"name": "a", "host": "h"}],
    )
    assert_invalid(extra, {"ssh_containers": {"0": {"host": [UNKNOWN]}}})
    ports = {
        customize(api, image_id, key_id)["ssh_containers"][0]["connection_info"]["customer_access"]["port"]
        for _ in range(5)
    }
    assert len(ports) == 5  # unfinished jobs never share a port


def test_aarch64_images_force_dkms_and_the_arm_kernel(
    api: httpx.Client, artifact_store: ArtifactStore, key_id: str
) -> None:
    arm = image_record(api, put_image(artifact_store).link, arch="aarch64")
    job = customize(api, arm, key_id, require_dkms=False)
    assert (job["arch"], job["kernel_file_name"], job["require_dkms"]) == ("aarch64", "Image", True)
    assert customize(api, arm, key_id, kernel_file_name="")["kernel_file_name"] == "Image"
    assert customize(api, arm, key_id, kernel_file_name="vmlinux")["kernel_file_name"] == "vmlinux"


def test_customize_dkms_follows_job_enable_dkms(
    work_root: Path, s3_env: dict[str, str], artifact_store: ArtifactStore
) -> None:
    started = _server(work_root, s3_env, JOB_ENABLE_DKMS="false")
    try:
        with httpx.Client(base_url=started.url, timeout=30) as client:
            key = client.post("/v3/public-keys", json={"name": "k", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"}).json()["id"]
            image = image_record(client, put_image(artifact_store).link)
            assert customize(client, image, key)["require_dkms"] is False
            assert customize(client, image, key, require_dkms=True)["require_dkms"] is True
            recipe = recipe_record(client, artifact_store, require_dkms=True)
            assert create_job(client, recipe, key)["require_dkms"] is True  # create jobs follow the recipe
    finally:
        started.stop()


def test_create_jobs(api: httpx.Client, artifact_store: ArtifactStore, key_id: str, server: ImsServer) -> None:
    recipe = recipe_record(
        api, artifact_store, require_dkms=False, template_dictionary=[{"key": "CSM_RELEASE", "value": "1.6"}]
    )
    job = create_job(api, recipe, key_id)
    assert set(job) == FIELDS
    assert job["kubernetes_job"] == f"cray-ims-{job['id']}-create"
    assert job["ssh_containers"] is None  # none asked for: the original keeps it absent
    assert job["require_dkms"] is False  # inherited from the recipe when not sent
    assert create_job(api, recipe, key_id, require_dkms=True)["require_dkms"] is True
    assert create_job(api, recipe, key_id, ssh_containers=[])["ssh_containers"] == []
    (debug,) = create_job(api, recipe, key_id, enable_debug=True)["ssh_containers"]
    assert (debug["name"], debug["jail"], debug["status"]) == ("debug", False, "pending")
    launch = launch_data(server, job["id"])
    assert launch["template_dictionary"] == {"CSM_RELEASE": "1.6"}
    assert launch["download_path"].startswith("s3://ims/recipes/")
    assert launch["recipe_type"] == "kiwi-ng"


def test_create_job_rules(api: httpx.Client, artifact_store: ArtifactStore, key_id: str) -> None:
    recipe = recipe_record(api, artifact_store)
    with_ssh = post(
        api,
        job_type="create",
        artifact_id=recipe,
        public_key_id=key_id,
        image_root_archive_name="x",
        ssh_containers=[{"name": "mine"}],
    )
    assert_problem(
        with_ssh, 400, f"User defined ssh containers during image create are not currently supported. {TAIL}"
    )
    packer = recipe_record(api, artifact_store, recipe_type="packer")
    refused = post(api, job_type="create", artifact_id=packer, public_key_id=key_id, image_root_archive_name="x")
    body = assert_problem(refused, 400)
    assert "packer are not supported" in body["detail"]
    # A recipe with a null template_dictionary (a 500 in the original) is just an empty dictionary.
    assert create_job(api, recipe_record(api, artifact_store, template_dictionary=None), key_id)


# --- POST: the original's 400/422 answers


def test_unknown_artifacts_and_keys(
    api: httpx.Client, artifact_store: ArtifactStore, image_id: str, key_id: str
) -> None:
    missing = str(uuid.uuid4())
    for job_type, kind in (("create", "recipe"), ("customize", "image")):
        response = post(api, job_type=job_type, artifact_id=missing, public_key_id=key_id, image_root_archive_name="x")
        assert_problem(
            response,
            400,
            f"Invalid artifact_id value in job request. No IMS {kind} record found matching id={missing}. {TAIL}",
        )
    no_link = image_record(api, None)
    response = post(api, job_type="customize", artifact_id=no_link, public_key_id=key_id, image_root_archive_name="x")
    assert_problem(response, 400, f"The IMS image does not have an artifact_link for image_id={no_link}. {PLEASE}")
    recipe = api.post("/v3/recipes", json={"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15"})
    recipe_id = recipe.json()["id"]
    response = post(api, job_type="create", artifact_id=recipe_id, public_key_id=key_id, image_root_archive_name="x")
    assert_problem(response, 400, f"The IMS recipe does not have an artifact_link for recipe_id={recipe_id}. {PLEASE}")
    response = post(api, job_type="customize", artifact_id=image_id, public_key_id=missing, image_root_archive_name="x")
    assert_problem(
        response,
        400,
        f"Invalid public_key_id value in job request. No IMS public-key record found matching id={missing}",
    )
    # Soft-deleted sources and keys do not count.
    gone = image_record(api, put_image(artifact_store).link)
    assert api.delete(f"/v3/images/{gone}").status_code == 204
    response = post(api, job_type="customize", artifact_id=gone, public_key_id=key_id, image_root_archive_name="x")
    assert_problem(response, 400)


@pytest.fixture
def stored(artifact_store: ArtifactStore) -> StoredImage:
    return put_image(artifact_store)


def test_manifest_problems(api: httpx.Client, artifact_store: ArtifactStore, stored: StoredImage, key_id: str) -> None:
    image = image_record(api, stored.link)
    location = S3Location.parse(stored.link["path"])
    rootfs = stored.manifest["artifacts"][0]
    kernel = stored.manifest["artifacts"][1]

    def post_with(manifest: Any) -> httpx.Response:
        artifact_store.put_bytes(location, json.dumps(manifest).encode(), "application/json")
        return post(api, job_type="customize", artifact_id=image, public_key_id=key_id, image_root_archive_name="x")

    corrupt = (
        f"The manifest.json file is corrupt or invalid for IMS image_id={image}. Could not determine the "
        f"manifest version or manifest version is unsupported. {TAIL}"
    )
    assert_problem(post_with({"artifacts": [rootfs]}), 400, corrupt)
    assert_problem(post_with({"version": "2.0", "artifacts": [rootfs]}), 400, corrupt)
    assert_problem(post_with({"version": "1.0", "artifacts": [{"link": rootfs["link"]}]}), 400, corrupt)
    assert_problem(
        post_with({"version": "1.0", "artifacts": [kernel]}),
        400,
        f"Error reading the manifest.json for IMS image_id={image}. The manifest does not include any "
        f"rootfs artifacts. {TAIL}",
    )
    assert_problem(
        post_with({"version": "1.0", "artifacts": [rootfs, rootfs]}),
        400,
        f"Error reading the manifest.json for IMS image_id={image}. The manifest includes multiple rootfs "
        f"artifacts. {TAIL}",
    )
    assert_problem(
        post_with({"version": "1.0", "artifacts": [{"type": rootfs["type"]}]}),
        400,
        f"The rootfs referenced in the manifest.json for ims_image_id={image} does not have a artifact link. {PLEASE}",
    )
    missing_link = make_link(S3Location("boot-images", f"{uuid.uuid4()}/rootfs"), "abc")
    body = assert_problem(post_with({"version": "1.0", "artifacts": [dict(rootfs, link=missing_link)]}), 422)
    assert body["detail"].startswith(f"The s3 artifact {missing_link!r} cannot be validated.")
    # Not JSON at all: the original answers 500; here it is the same 400 as a corrupt manifest.
    artifact_store.put_bytes(location, b"not json", "application/json")
    response = post(api, job_type="customize", artifact_id=image, public_key_id=key_id, image_root_archive_name="x")
    assert_problem(response, 400, corrupt)
    # The manifest itself gone: its link cannot be validated.
    artifact_store.delete(location)
    response = post(api, job_type="customize", artifact_id=image, public_key_id=key_id, image_root_archive_name="x")
    assert assert_problem(response, 422)["detail"].startswith("The s3 artifact {")


def test_the_download_md5_prefers_s3_metadata(
    api: httpx.Client, artifact_store: ArtifactStore, server: ImsServer, key_id: str
) -> None:
    stored = put_image(artifact_store, without_md5=["rootfs"])
    job = customize(api, image_record(api, stored.link), key_id)
    rootfs = S3Location.parse(stored.manifest["artifacts"][0]["link"]["path"])
    head = artifact_store.head(rootfs)
    assert head is not None
    assert launch_data(server, job["id"])["md5"] == head.metadata["md5sum"]
    # Without `md5sum` metadata on the object, the manifest's md5 is used.
    bare = S3Location("boot-images", f"{uuid.uuid4()}/rootfs")
    etag = artifact_store.put_bytes(bare, b"rootfs bytes")
    manifest = {
        "version": "1.0",
        "artifacts": [
            {"link": make_link(bare, etag), "md5": "0" * 32, "type": "application/vnd.cray.image.rootfs.squashfs"}
        ],
    }
    link = put_manifest(artifact_store, S3Location("boot-images", f"{uuid.uuid4()}/manifest.json"), manifest)
    job = customize(api, image_record(api, link), key_id)
    assert launch_data(server, job["id"]) | {"public_key": ""} == {
        "download_path": bare.url,
        "md5": "0" * 32,
        "public_key": "",
    }


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        (
            {"job_type": "customize"},
            {"artifact_id": [MISSING], "public_key_id": [MISSING], "image_root_archive_name": [MISSING]},
        ),
        ({"job_type": "build"}, {"job_type": ["Job type must be one of: create, customize."]}),
        ({"artifact_id": "nope"}, {"artifact_id": ["Not a valid UUID."]}),
        ({"build_env_size": 0}, {"build_env_size": ["build_env_size must be greater than or equal to 1"]}),
        ({"job_mem_size": 0}, {"job_mem_size": ["build_env_size must be greater than or equal to 1"]}),
        ({"kernel_file_name": None}, {"kernel_file_name": ["Field may not be null."]}),
        ({"enable_debug": "maybe"}, {"enable_debug": ["Not a valid boolean."]}),
        ({"ssh_containers": "one"}, {"ssh_containers": ["Not a valid list."]}),
        ({"status": "success"}, {"status": [UNKNOWN]}),
        ({"id": str(uuid.uuid4())}, {"id": [UNKNOWN]}),
    ],
)
def test_input_validation(
    api: httpx.Client, image_id: str, key_id: str, fields: dict[str, Any], errors: dict[str, Any]
) -> None:
    body = {"job_type": "customize", "artifact_id": image_id, "public_key_id": key_id, "image_root_archive_name": "x"}
    if fields.get("job_type") == "customize":
        body = {}
    assert_invalid(post(api, **{**body, **fields}), errors)


@pytest.mark.parametrize("name", ["../../etc/shadow", "a/b", "..", ".", "bad\nname"])
def test_boot_file_names_must_be_plain(api: httpx.Client, image_id: str, key_id: str, name: str) -> None:
    # Ours: these become paths under the image's /boot inside a root process.
    for field in ("kernel_file_name", "initrd_file_name", "kernel_parameters_file_name"):
        response = post(
            api,
            job_type="customize",
            artifact_id=image_id,
            public_key_id=key_id,
            image_root_archive_name="x",
            **{field: name},
        )
        body = assert_problem(response, 422)
        assert list(body["errors"]) == [field]


def test_request_body_errors(api: httpx.Client) -> None:
    assert_problem(api.post("/v3/jobs", json={}), 400, NO_INPUT)
    assert_message(api.post("/v3/jobs", content=b"{", headers={"content-type": "application/json"}), 400, BAD_JSON)
    assert_message(api.post("/v3/jobs", content=b"{}", headers={"content-type": "text/plain"}), 415, NOT_JSON)


# --- GET, PATCH, DELETE one


def test_unknown_jobs_are_404(api: httpx.Client) -> None:
    for prefix in PREFIXES:
        for method in ("GET", "DELETE"):
            assert_problem(api.request(method, f"{prefix}/jobs/nope"), 404, NOT_FOUND)
        # The id is checked before the body is even parsed.
        assert_problem(api.patch(f"{prefix}/jobs/{uuid.uuid4()}", content=b"x"), 404, NOT_FOUND)


def test_patch(api: httpx.Client, image_id: str, key_id: str) -> None:
    job = customize(api, image_id, key_id)
    uri = f"/jobs/{job['id']}"
    for status in STATUSES:  # no state machine, as in the original
        response = api.patch(uri, json={"status": status})
        assert response.status_code == 200 and response.json()["status"] == status
    assert api.patch(uri, json={"status": "creating"}).json()["status"] == "creating"
    result = str(uuid.uuid4()).upper()
    patched = api.patch(f"/v3{uri}", json={"resultant_image_id": result}).json()
    assert patched["resultant_image_id"] == result.lower()
    assert set(patched) == FIELDS
    # Ours: a reason travels with a status, and a later status without one clears it.
    reasoned = api.patch(uri, json={"status": "error", "status_reason": "prepare: md5 mismatch"}).json()
    assert (reasoned["status"], reasoned["status_reason"]) == ("error", "prepare: md5 mismatch")
    assert api.patch(uri, json={"resultant_image_id": None}).json()["status_reason"] == "prepare: md5 mismatch"
    assert api.patch(uri, json={"status": "success"}).json()["status_reason"] is None
    assert api.get(uri).json() == api.get(f"/v3{uri}").json()


def test_patch_validation(api: httpx.Client, image_id: str, key_id: str) -> None:
    uri = f"/v3/jobs/{customize(api, image_id, key_id)['id']}"
    assert_problem(api.patch(uri, json={}), 400, NO_INPUT)
    assert_message(api.patch(uri, content=b"{}", headers={"content-type": "text/plain"}), 415, NOT_JSON)
    assert_invalid(
        api.patch(uri, json={"status": "done"}), {"status": ["Job state must be one of: " + ", ".join(STATUSES) + "."]}
    )
    assert_invalid(api.patch(uri, json={"resultant_image_id": "x"}), {"resultant_image_id": ["Not a valid UUID."]})
    assert_invalid(api.patch(uri, json={"arch": "x86_64"}), {"arch": [UNKNOWN]})


@pytest.mark.parametrize("prefix", PREFIXES)
def test_delete_one(api: httpx.Client, image_id: str, key_id: str, prefix: str) -> None:
    job = customize(api, image_id, key_id)
    assert_no_content(api.delete(f"{prefix}/jobs/{job['id']}"))
    for other in PREFIXES:
        assert api.get(f"{other}/jobs/{job['id']}").status_code == 404
    assert_problem(api.delete(f"{prefix}/jobs/{job['id']}"), 404, NOT_FOUND)


# --- the collection


@pytest.fixture
def fresh(
    work_root: Path, s3_env: dict[str, str], artifact_store: ArtifactStore
) -> Iterator[tuple[httpx.Client, str, str]]:
    started = _server(work_root, s3_env)
    with httpx.Client(base_url=started.url, timeout=30) as client:
        key = client.post("/v3/public-keys", json={"name": "k", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"}).json()["id"]
        yield client, image_record(client, put_image(artifact_store).link), key
    started.stop()


def _ids(api: httpx.Client, **params: Any) -> set[str]:
    response = api.get("/v3/jobs", params=params)
    assert response.status_code == 200, response.text
    return {job["id"] for job in response.json()}


def test_list_filters_and_paging(fresh: tuple[httpx.Client, str, str], artifact_store: ArtifactStore) -> None:
    api, image, key = fresh
    jobs = [customize(api, image, key) for _ in range(3)]
    built = create_job(api, recipe_record(api, artifact_store), key)
    api.patch(f"/v3/jobs/{jobs[0]['id']}", json={"status": "error"})
    api.patch(f"/v3/jobs/{jobs[1]['id']}", json={"status": "success"})
    everything = api.get("/v3/jobs").json()
    assert [job["id"] for job in everything] == [*(job["id"] for job in jobs), built["id"]]  # oldest first
    assert api.get("/jobs").json() == api.get("/v2/jobs").json() == everything
    assert _ids(api, status="error") == {jobs[0]["id"]}
    assert _ids(api, status=["ERROR", "success"]) == {jobs[0]["id"], jobs[1]["id"]}
    assert _ids(api, job_type="create") == {built["id"]}
    assert _ids(api, job_type="customize", status="creating") == {jobs[2]["id"]}
    assert [job["id"] for job in api.get("/v3/jobs", params={"limit": 2, "offset": 1}).json()] == [
        jobs[1]["id"],
        jobs[2]["id"],
    ]
    assert_problem(
        api.get("/v3/jobs", params={"status": "bogus"}),
        400,
        "Invalid query parameters.",
        {"status": ["Must be one of: " + ", ".join(STATUSES) + "."]},
    )
    assert_problem(
        api.get("/v3/jobs", params={"job_type": "CREATE"}),
        400,
        "Invalid query parameters.",
        {"job_type": ["Must be one of: create, customize."]},
    )
    assert_problem(api.get("/v3/jobs", params={"limit": 0}), 400, "Invalid query parameters.")


def _title_only(response: httpx.Response, message: str) -> None:
    # The original puts these messages in `title` and sends no `detail`.
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {"status": 400, "title": message}


def test_delete_collection_filters(fresh: tuple[httpx.Client, str, str], artifact_store: ArtifactStore) -> None:
    api, image, key = fresh
    old = customize(api, image, key)
    time.sleep(1.2)
    jobs = [customize(api, image, key) for _ in range(3)]
    built = create_job(api, recipe_record(api, artifact_store), key)
    api.patch(f"/v3/jobs/{jobs[0]['id']}", json={"status": "error"})
    api.patch(f"/v3/jobs/{jobs[1]['id']}", json={"status": "success"})

    _title_only(
        api.delete("/v3/jobs", params={"status": "bogus"}), f"Unsupported status bogus in query parameters. {TAIL}"
    )
    _title_only(
        api.delete("/jobs", params={"job_type": "CREATE"}), f"Unsupported job_type CREATE in query parameters. {TAIL}"
    )
    # Ours: an unparseable age is refused (the original deleted every job).
    _title_only(api.delete("/v2/jobs", params={"age": "xyz"}), f"Unsupported age xyz in query parameters. {TAIL}")
    assert len(api.get("/v3/jobs").json()) == 5

    assert_no_content(api.delete("/v3/jobs", params={"age": "1s"}))  # only the job created over a second ago
    assert _ids(api) == {job["id"] for job in [*jobs, built]} and old["id"] not in _ids(api)
    assert_no_content(api.delete("/v3/jobs", params={"status": ["ERROR"], "job_type": "create"}))  # AND: none
    assert len(_ids(api)) == 4
    # Only the first job_type counts.
    assert_no_content(api.delete("/v3/jobs", params=[("job_type", "create"), ("job_type", "bogus")]))
    assert built["id"] not in _ids(api)
    assert_no_content(api.delete("/v3/jobs", params=[("status", "Error"), ("status", "success")]))
    assert _ids(api) == {jobs[2]["id"]}
    assert_no_content(api.delete("/v3/jobs", params={"age": "1h"}))
    assert _ids(api) == {jobs[2]["id"]}
    assert_no_content(api.delete("/v3/jobs"))
    assert _ids(api) == set()


def test_logs_are_v3_only(api: httpx.Client, image_id: str, key_id: str) -> None:
    job = customize(api, image_id, key_id)
    response = api.get(f"/v3/jobs/{job['id']}/logs")
    assert response.status_code == 200 and response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == ""  # not started: no worker runs on this server
    assert api.get(f"/v2/jobs/{job['id']}/logs").status_code == 404
    assert_problem(api.get("/v3/jobs/nope/logs"), 404, NOT_FOUND)
