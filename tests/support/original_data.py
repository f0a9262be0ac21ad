"""Data files as the original IMS writes them: the eight JSON arrays of schema dumps, every field present."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KEY_A = "2d1d9b47-5a3c-4bb1-9d6e-0c53a2f0a001"
KEY_B = "2d1d9b47-5a3c-4bb1-9d6e-0c53a2f0a002"
KEY_DELETED = "2d1d9b47-5a3c-4bb1-9d6e-0c53a2f0a003"
RECIPE_A = "6a0e3c1b-97c4-4e4f-8f4b-1b2c3d4e5001"
RECIPE_B = "6a0e3c1b-97c4-4e4f-8f4b-1b2c3d4e5002"
RECIPE_DELETED = "6a0e3c1b-97c4-4e4f-8f4b-1b2c3d4e5003"
IMAGE_A = "c0ffee00-1111-4222-8333-444455556001"
IMAGE_B = "c0ffee00-1111-4222-8333-444455556002"
IMAGE_DELETED = "c0ffee00-1111-4222-8333-444455556003"
JOB_CREATE = "0b5e7a9d-2f1c-4d3e-9a8b-7c6d5e4f3001"
JOB_CUSTOMIZE = "0b5e7a9d-2f1c-4d3e-9a8b-7c6d5e4f3002"

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS admin@ncn-m001"


def _link(path: str, etag: str = "") -> dict[str, str]:
    return {"path": path, "etag": etag, "type": "s3"}


def public_keys() -> list[dict[str, Any]]:
    return [
        {"name": "admin", "public_key": SSH_KEY, "id": KEY_A, "created": "2024-03-01T08:15:00.123456"},
        # Microseconds of 0 are left out by isoformat().
        {"name": "ops", "public_key": SSH_KEY, "id": KEY_B, "created": "2024-03-02T09:00:00"},
    ]


def deleted_public_keys() -> list[dict[str, Any]]:
    return [{"name": "old", "public_key": SSH_KEY, "id": KEY_DELETED, "created": "2023-01-01T00:00:01.500000",
             "deleted": "2024-01-05T10:11:12.000100"}]


def recipes() -> list[dict[str, Any]]:
    return [
        {"name": "cos-2.5", "link": _link(f"s3://ims/recipes/{RECIPE_A}/recipe.tar.gz", "0a1b2c3d"),
         "recipe_type": "kiwi-ng", "linux_distribution": "sles15",
         "template_dictionary": [{"key": "CSM_RELEASE_VERSION", "value": "1.5.0"}], "require_dkms": True,
         "arch": "x86_64", "id": RECIPE_A, "created": "2024-03-03T12:00:00.000001"},
        {"name": "arm", "link": None, "recipe_type": "kiwi-ng", "linux_distribution": "sles15",
         "template_dictionary": None, "require_dkms": False, "arch": "aarch64", "id": RECIPE_B,
         "created": "2024-03-04T12:00:00.500000"},
    ]


def deleted_recipes() -> list[dict[str, Any]]:
    return [
        {"name": "gone", "link": _link(f"s3://ims/deleted/recipes/{RECIPE_DELETED}/recipe.tar.gz", "9f8e7d"),
         "recipe_type": "kiwi-ng", "linux_distribution": "sles12", "template_dictionary": [],
         "require_dkms": True, "arch": "x86_64", "id": RECIPE_DELETED, "created": "2023-06-01T00:00:00",
         "deleted": "2024-02-02T02:02:02.222222"}
    ]


def images() -> list[dict[str, Any]]:
    return [
        {"name": "cos-2.5-x86", "link": _link(f"s3://boot-images/{IMAGE_A}/manifest.json", "abc123"),
         "arch": "x86_64", "metadata": {"key": "value", "release": "1.5"}, "id": IMAGE_A,
         "created": "2024-03-05T00:00:00.654321"},
        {"name": "empty", "link": None, "arch": "aarch64", "metadata": {}, "id": IMAGE_B,
         "created": "2024-03-06T00:00:00"},
    ]


def deleted_images() -> list[dict[str, Any]]:
    return [
        {"name": "old-image", "link": _link(f"s3://boot-images/deleted/{IMAGE_DELETED}/deleted_manifest.json"),
         "arch": "x86_64", "metadata": {}, "id": IMAGE_DELETED, "created": "2023-05-05T05:05:05.500000",
         "deleted": "2024-02-03T03:03:03"}
    ]


def jobs() -> list[dict[str, Any]]:
    customize_host = f"{JOB_CUSTOMIZE}.ims.cmn.shasta.local"
    return [
        {"created": "2024-03-07T10:00:00.100000", "job_type": "create", "artifact_id": RECIPE_A,
         "build_env_size": 15, "id": JOB_CREATE, "enable_debug": False, "public_key_id": KEY_A,
         "kubernetes_job": f"cray-ims-{JOB_CREATE}-create", "kubernetes_service": f"cray-ims-{JOB_CREATE}-service",
         "kubernetes_configmap": f"cray-ims-{JOB_CREATE}-configmap", "ssh_containers": None, "status": "success",
         "image_root_archive_name": "cos-2.5-x86", "initrd_file_name": "initrd", "kernel_file_name": "vmlinuz",
         "resultant_image_id": IMAGE_A, "kubernetes_namespace": "ims",
         "kernel_parameters_file_name": "kernel-parameters", "arch": "x86_64", "require_dkms": True,
         "kubernetes_pvc": f"cray-ims-{JOB_CREATE}-job-claim", "job_mem_size": 8, "remote_build_node": "",
         "kubernetes_secret": None},
        {"created": "2024-03-08T10:00:00", "job_type": "customize", "artifact_id": IMAGE_A,
         "build_env_size": 60, "id": JOB_CUSTOMIZE, "enable_debug": False, "public_key_id": KEY_B,
         "kubernetes_job": f"cray-ims-{JOB_CUSTOMIZE}-customize",
         "kubernetes_service": f"cray-ims-{JOB_CUSTOMIZE}-service",
         "kubernetes_configmap": f"cray-ims-{JOB_CUSTOMIZE}-configmap",
         "ssh_containers": [
             {"name": "customize", "jail": False, "status": "pending",
              "connection_info": {"customer_access": {"host": customize_host, "port": 22},
                                  "cluster.local": {"host": f"cray-ims-{JOB_CUSTOMIZE}-service.ims.svc.cluster.local",
                                                    "port": 22}}}
         ],
         "status": "waiting_on_user", "image_root_archive_name": "cos-custom", "initrd_file_name": "initrd",
         "kernel_file_name": "vmlinuz", "resultant_image_id": None, "kubernetes_namespace": "ims",
         "kernel_parameters_file_name": "kernel-parameters", "arch": "x86_64", "require_dkms": False,
         "kubernetes_pvc": f"cray-ims-{JOB_CUSTOMIZE}-job-claim", "job_mem_size": 16,
         "remote_build_node": "x3000c0s7b0n0", "kubernetes_secret": f"cray-ims-{JOB_CUSTOMIZE}-signing-keys"},
    ]


def remote_build_nodes() -> list[dict[str, Any]]:
    # Written in an order that is not alphabetical, to check it is kept.
    return [{"xname": "x3000c0s7b0n0"}, {"xname": "x3000c0s1b0n0"}]


def all_files() -> dict[str, list[dict[str, Any]]]:
    return {
        "v2_public_keys.json": public_keys(),
        "v3_deleted_public_keys.json": deleted_public_keys(),
        "v2.2_recipes.json": recipes(),
        "v3.2_deleted_recipes.json": deleted_recipes(),
        "v2.1_images.json": images(),
        "v3.1_deleted_images.json": deleted_images(),
        "v2.4_jobs.json": jobs(),
        "v2.0_remote_build_nodes.json": remote_build_nodes(),
    }


def write_files(directory: Path, files: dict[str, Any] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, records in (all_files() if files is None else files).items():
        (directory / name).write_text(json.dumps(records))
    return directory


def read_files(directory: Path) -> dict[str, Any]:
    return {path.name: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}
