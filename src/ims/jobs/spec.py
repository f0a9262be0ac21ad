"""The environment a job's stages get: the original's variable names (ims.stages.environment reads them).

Secrets (the job's token, the presigned download URL) exist only here and in the stage's environment; the
job record and the `launch` column hold nothing secret, and the token and the URL are made anew at every
launch. A job holds no S3 credential: it reaches its artifacts through IMS (ims.api.routers.job_artifacts).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from typing import Any

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location
from ims.jobs.runner import JobSpec, RunnerError
from ims.settings import Settings

# Stage tuning a deployment (or a test) may set on the server; handed to every job unchanged.
STAGE_TUNING = (
    "IMS_POLL_SECONDS",
    "IMS_DOWNLOAD_ATTEMPTS",
    "IMS_DOWNLOAD_RETRY_SECONDS",
    "IMS_SQUASHFS_LEVEL",
    "IMS_REPOS_TIMEOUT",
    "IMS_REPOS_POLL_SECONDS",
    "IMS_KIWI_NG",
    "IMS_UPLOAD_PART_MIB",
    # The session sandbox's network: isolated (slirp4netns) or host; unset: isolated where slirp4netns is installed.
    "IMS_JOB_NETWORK",
)


def api_url(settings: Settings) -> str:
    """Where a stage reaches IMS: IMS_API_URL, else this server's own address (the wildcard means loopback)."""
    if settings.api_url:
        return settings.api_url.rstrip("/")
    host = settings.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def ssh_listen(settings: Settings) -> str:
    if settings.job_ssh_listen:
        return settings.job_ssh_listen
    try:
        ipaddress.ip_address(settings.ssh_host)
    except ValueError:
        return "0.0.0.0"  # a name: sshd listens everywhere and the name resolves to one of them
    return settings.ssh_host


def _flag(value: Any) -> str:
    return "True" if value is True or str(value).lower() == "true" else "False"


def _verify(value: bool | str) -> str:
    return value if isinstance(value, str) else ("True" if value else "False")


def build_spec(
    job: Mapping[str, Any],
    launch: Mapping[str, Any],
    ssh_port: int | None,
    settings: Settings,
    artifacts: ArtifactStore,
    environ: Mapping[str, str] | None = None,
    *,
    job_token: str = "",
) -> JobSpec:
    environ = os.environ if environ is None else environ
    try:
        download_url = artifacts.presign_get(S3Location.parse(str(launch["download_path"])))
    except Exception as exc:  # boto raises several unrelated types here
        raise RunnerError(f"could not sign a download URL for {launch.get('download_path')}: {exc}") from exc
    containers = job.get("ssh_containers") or []
    jail = containers[0].get("jail", False) if containers and isinstance(containers[0], dict) else False
    env: dict[str, str] = {
        "IMS_JOB_ID": str(job["id"]),
        "IMS_ACTION": str(job["job_type"]),
        "DOWNLOAD_URL": download_url,
        "DOWNLOAD_MD5SUM": str(launch.get("md5") or ""),
        "IMAGE_ROOT_ARCHIVE_NAME": str(job["image_root_archive_name"]),
        "KERNEL_FILENAME": str(job["kernel_file_name"]),
        "INITRD_FILENAME": str(job["initrd_file_name"]),
        "KERNEL_PARAMETERS_FILENAME": str(job["kernel_parameters_file_name"]),
        "SSH_JAIL": _flag(jail),
        "BUILD_ARCH": str(job["arch"]),
        "JOB_ENABLE_DKMS": _flag(job.get("require_dkms")),
        "ENABLE_DEBUG": _flag(job.get("enable_debug")),
        "REMOTE_BUILD_NODE": str(job.get("remote_build_node") or ""),
        "IMS_URL": api_url(settings),
        # The job's own bearer token (ims.store.job_tokens): what it may do is decided by ims.api.auth.
        "IMS_JOB_TOKEN": job_token,
        # No S3 endpoint or keys: the job's artifacts move through presigned URLs (docs/auth.md).
        "S3_SSL_VALIDATE": _verify(settings.s3_ssl_validate),
        "S3_BOOT_IMAGES_BUCKET": settings.s3_boot_images_bucket,
        "IMS_SQUASHFS_COMPRESSOR": settings.squashfs_compressor,
        "IMS_JOB_USER_WAIT_LIMIT": f"{settings.job_user_wait_limit:g}",
        # How long a stage retries an unreachable IMS before the job ends (ims.client.http.GIVE_UP_ENV).
        "IMS_JOB_API_GIVE_UP_SECONDS": f"{settings.job_api_give_up_seconds:g}",
        # How long the job's launcher (ims.jobs.nsinit) lets a stage outlive SIGTERM before killing it.
        "IMS_JOB_STOP_GRACE_SECONDS": f"{settings.job_stop_grace_seconds:g}",
        "IMS_PUBLIC_KEY": str(launch.get("public_key") or ""),
    }
    if ssh_port is not None:
        env["IMS_SSH_PORT"] = str(ssh_port)
        env["IMS_SSH_LISTEN"] = ssh_listen(settings)
    if job["job_type"] == "create":
        env["TEMPLATE_DICTIONARY"] = json.dumps(launch.get("template_dictionary") or {})
        env["RECIPE_TYPE"] = str(launch.get("recipe_type") or "")
        env["LINUX_DISTRIBUTION"] = str(launch.get("linux_distribution") or "")
    if settings.ca_cert_file is not None:
        env["CA_CERT"] = str(settings.ca_cert_file)
    for name in STAGE_TUNING:
        if environ.get(name):
            env[name] = environ[name]
    if any("\0" in value for value in env.values()):
        raise RunnerError("a job value holds a NUL character and cannot be passed to the job")
    return JobSpec(job_id=str(job["id"]), stage=str(job["job_type"]), env=env)
