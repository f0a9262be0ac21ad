"""One typed settings object, read from the environment.

The original's variable names are kept verbatim (S3_*, DEFAULT_IMS_*, JOB_*); ours carry an IMS_ prefix.
"""

from __future__ import annotations

import ipaddress
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_FALSE_WORDS = {"false", "off", "no", "f", "0", ""}
_TRUE_WORDS = {"true", "1", "t"}


def parse_ssl_validate(value: Any) -> bool | str:
    """S3_SSL_VALIDATE: a true/false word, or (as the original allows) a CA bundle path handed to boto."""
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() in _FALSE_WORDS:
        return False
    if text.lower() in _TRUE_WORDS | {"yes", "on"}:
        return True
    return text


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=True, extra="ignore")

    # --- ours
    data_dir: Path = Field(default=Path("var/ims"), validation_alias="IMS_DATA_DIR")
    database_url: str = Field(default="", validation_alias="IMS_DATABASE_URL")
    host: str = Field(default="127.0.0.1", validation_alias="IMS_HOST")
    port: int = Field(default=9100, ge=1, le=65535, validation_alias="IMS_PORT")
    log_level: str = Field(default="INFO", validation_alias=AliasChoices("IMS_LOG_LEVEL", "LOG_LEVEL"))
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, validation_alias="IMS_MAX_BODY_BYTES")
    run_workers: bool = Field(default=True, validation_alias="IMS_RUN_WORKERS")
    task_lease_seconds: float = Field(default=30.0, gt=0, validation_alias="IMS_TASK_LEASE_SECONDS")
    task_poll_seconds: float = Field(default=0.5, gt=0, validation_alias="IMS_TASK_POLL_SECONDS")
    job_heartbeat_timeout: float = Field(default=60.0, gt=0, validation_alias="IMS_JOB_HEARTBEAT_TIMEOUT")
    job_user_wait_limit: float = Field(default=86400.0, gt=0, validation_alias="IMS_JOB_USER_WAIT_LIMIT")
    job_runner: str = Field(default="local", validation_alias="IMS_JOB_RUNNER")
    jobs_dir: Path | None = Field(default=None, validation_alias="IMS_JOBS_DIR")
    ssh_host: str = Field(default="127.0.0.1", validation_alias="IMS_SSH_HOST")
    # Jobs' sshd: the address it binds (default: IMS_SSH_HOST when that is an IP, else all) and its port range.
    job_ssh_listen: str = Field(default="", validation_alias="IMS_JOB_SSH_LISTEN")
    job_ssh_ports: str = Field(default="20000-20999", validation_alias="IMS_JOB_SSH_PORTS")
    squashfs_compressor: str = Field(default="zstd", validation_alias="IMS_SQUASHFS_COMPRESSOR")
    ca_cert_file: Path | None = Field(default=None, validation_alias="IMS_CA_CERT_FILE")
    api_url: str = Field(default="", validation_alias="IMS_API_URL")
    # Hardening (issue 10): S3 calls made while a request waits, health probes, HTTP keep-alive, jobs.
    s3_request_timeout: float = Field(default=5.0, gt=0, validation_alias="IMS_S3_REQUEST_TIMEOUT")
    s3_request_concurrency: int = Field(default=8, ge=1, validation_alias="IMS_S3_REQUEST_CONCURRENCY")
    health_probe_seconds: float = Field(default=2.0, gt=0, validation_alias="IMS_HEALTH_PROBE_SECONDS")
    keepalive_seconds: float = Field(default=75.0, gt=0, validation_alias="IMS_KEEPALIVE_SECONDS")
    job_api_give_up_seconds: float = Field(default=300.0, gt=0, validation_alias="IMS_JOB_API_GIVE_UP_SECONDS")
    job_stop_grace_seconds: float = Field(default=15.0, gt=0, validation_alias="IMS_JOB_STOP_GRACE_SECONDS")
    # Authentication (docs/auth.md). Unset means `none`, which `ims serve` accepts only on a loopback address.
    auth: str = Field(default="", validation_alias="IMS_AUTH")
    oidc_issuer: str = Field(default="", validation_alias="IMS_OIDC_ISSUER")
    oidc_audience: str = Field(default="", validation_alias="IMS_OIDC_AUDIENCE")  # comma-separated: any of them
    oidc_jwks_url: str = Field(default="", validation_alias="IMS_OIDC_JWKS_URL")
    oidc_roles_claim: str = Field(default="realm_access.roles", validation_alias="IMS_OIDC_ROLES_CLAIM")
    oidc_admin_role: str = Field(default="admin", validation_alias="IMS_OIDC_ADMIN_ROLE")
    oidc_read_only_role: str = Field(default="read-only", validation_alias="IMS_OIDC_READ_ONLY_ROLE")
    oidc_clock_skew: float = Field(default=30.0, ge=0, le=3600, validation_alias="IMS_OIDC_CLOCK_SKEW")
    oidc_jwks_refresh_seconds: float = Field(default=30.0, ge=0, validation_alias="IMS_OIDC_JWKS_REFRESH_SECONDS")
    oidc_ca_file: Path | None = Field(default=None, validation_alias="IMS_OIDC_CA_FILE")  # else the system's CAs
    # Remote build nodes (docs/remote-nodes.md): IMS's SSH key (made in the data dir when not given), probes.
    remote_node_key: Path | None = Field(default=None, validation_alias="IMS_REMOTE_NODE_KEY")
    remote_probe_timeout: float = Field(default=5.0, gt=0, validation_alias="IMS_REMOTE_PROBE_TIMEOUT")
    remote_status_cache_seconds: float = Field(default=3.0, ge=0, validation_alias="IMS_REMOTE_STATUS_CACHE_SECONDS")
    remote_lost_seconds: float = Field(default=30.0, gt=0, validation_alias="IMS_REMOTE_LOST_SECONDS")

    # --- the original's names
    s3_endpoint: str = Field(default="", validation_alias="S3_ENDPOINT")
    s3_access_key: str = Field(default="", validation_alias="S3_ACCESS_KEY")
    s3_secret_key: str = Field(default="", validation_alias="S3_SECRET_KEY")
    s3_ssl_validate: bool | str = Field(default=False, validation_alias="S3_SSL_VALIDATE")
    s3_ims_bucket: str = Field(default="ims", validation_alias="S3_IMS_BUCKET")
    s3_boot_images_bucket: str = Field(default="boot-images", validation_alias="S3_BOOT_IMAGES_BUCKET")
    s3_url_expiration: int = Field(default=432000, ge=1, validation_alias="S3_URL_EXPIRATION")
    s3_connect_timeout: float = Field(default=60, gt=0, validation_alias="S3_CONNECT_TIMEOUT")
    s3_read_timeout: float = Field(default=60, gt=0, validation_alias="S3_READ_TIMEOUT")
    max_image_manifest_size_bytes: int = Field(
        default=1048576, ge=1, validation_alias="MAX_IMAGE_MANIFEST_SIZE_BYTES"
    )
    default_ims_image_size: int = Field(default=60, ge=1, validation_alias="DEFAULT_IMS_IMAGE_SIZE")
    default_ims_job_mem_size: int = Field(default=8, ge=1, validation_alias="DEFAULT_IMS_JOB_MEM_SIZE")
    default_ims_job_namespace: str = Field(default="ims", validation_alias="DEFAULT_IMS_JOB_NAMESPACE")
    default_ims_job_remote_timeout_count: int = Field(
        default=12, ge=1, validation_alias="DEFAULT_IMS_JOB_REMOTE_TIMEOUT_COUNT"
    )
    job_customer_access_subnet_name: str = Field(default="cmn", validation_alias="JOB_CUSTOMER_ACCESS_SUBNET_NAME")
    job_customer_access_network_domain: str = Field(
        default="shasta.local", validation_alias="JOB_CUSTOMER_ACCESS_NETWORK_DOMAIN"
    )
    job_customer_access_network_access_pool: str = Field(
        default="customer-management", validation_alias="JOB_CUSTOMER_ACCESS_NETWORK_ACCESS_POOL"
    )
    job_enable_dkms: str = Field(default="True", validation_alias="JOB_ENABLE_DKMS")
    job_kata_runtime: str = Field(default="kata-qemu", validation_alias="JOB_KATA_RUNTIME")
    job_aarch64_runtime: str = Field(default="kata-qemu", validation_alias="JOB_AARCH64_RUNTIME")

    @field_validator("s3_ssl_validate", mode="before")
    @classmethod
    def _ssl_validate(cls, value: Any) -> bool | str:
        return parse_ssl_validate(value)

    @field_validator("auth")
    @classmethod
    def _auth(cls, value: str) -> str:
        mode = value.strip().lower()
        if mode not in ("", "none", "oidc"):
            raise ValueError(f"must be none or oidc, not {value!r}")
        return mode

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        if self.auth == "oidc":
            missing = [name for name, value in (("IMS_OIDC_ISSUER", self.oidc_issuer),
                                                ("IMS_OIDC_AUDIENCE", self.oidc_audience)) if not value.strip()]
            if missing:
                raise ValueError(f"IMS_AUTH=oidc needs {' and '.join(missing)}")
        return self

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @property
    def dkms_enabled_globally(self) -> bool:
        return self.job_enable_dkms.strip().lower() in _TRUE_WORDS

    @property
    def auth_mode(self) -> str:
        return self.auth or "none"

    def auth_start_problem(self) -> str | None:
        """Why `ims serve` must not start as configured: no explicit IMS_AUTH on a non-loopback address."""
        if self.auth or is_loopback(self.host):
            return None
        return (
            f"ims: IMS_HOST={self.host} is not a loopback address and IMS_AUTH is not set: set IMS_AUTH=oidc "
            "(see docs/auth.md), or IMS_AUTH=none to serve without authentication"
        )

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ims.sqlite3').resolve()}"

    @property
    def effective_jobs_dir(self) -> Path:
        return self.jobs_dir if self.jobs_dir is not None else self.data_dir / "jobs"


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


def load_settings_or_exit() -> Settings:
    """Read settings; on a bad value print one clear line and stop."""
    try:
        return load_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first.get("loc", ())) or "settings"
        message = str(first.get("msg")).removeprefix("Value error, ")  # pydantic's prefix says nothing to a user
        print(f"ims: invalid setting {name}: {message}", file=sys.stderr)
        raise SystemExit(2) from None


@lru_cache(maxsize=1)
def cached_settings() -> Settings:
    return load_settings_or_exit()
