"""Job rules: statuses, Kubernetes-style resource names, DKMS and kernel defaults, connection info."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JOB_TYPES = ("create", "customize")
JOB_STATUSES = (
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
FINAL_STATUSES = frozenset({"error", "success"})

ROOTFS_MIME = "application/vnd.cray.image.rootfs.squashfs"


def default_kernel_file_name(arch: str) -> str:
    return "Image" if arch == "aarch64" else "vmlinuz"


@dataclass(frozen=True)
class ResourceNames:
    job: str
    service: str
    configmap: str
    pvc: str
    secret: str


def resource_names(job_id: str, job_type: str) -> ResourceNames:
    base = f"cray-ims-{job_id}"
    return ResourceNames(
        job=f"{base}-{job_type}",
        service=f"{base}-service",
        configmap=f"{base}-configmap",
        pvc=f"{base}-job-claim",
        secret=f"{base}-signing-keys",
    )


def resolve_require_dkms(
    *,
    arch: str,
    job_type: str,
    user_sent: bool,
    user_value: bool,
    recipe_value: bool | None,
    dkms_enabled_globally: bool,
) -> bool:
    """The original's order: aarch64 forces DKMS; else the user's value; else recipe (create) or global."""
    if arch == "aarch64":
        return True
    if user_sent:
        return user_value
    if job_type == "create":
        return bool(recipe_value) if recipe_value is not None else True
    return dkms_enabled_globally


def default_ssh_containers(
    job_type: str, enable_debug: bool, given: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Which SSH container a job gets, before connection info is filled in."""
    if job_type == "create":
        return [{"name": "debug", "jail": False}] if enable_debug else []
    if not given:
        return [{"name": "customize", "jail": False}]
    return [dict(container) for container in given]


def customer_access_host(job_id: str, subnet: str, domain: str) -> str:
    return f"{job_id}.ims.{subnet}.{domain}"


def cluster_local_host(service: str, namespace: str) -> str:
    return f"{service}.{namespace}.svc.cluster.local"
