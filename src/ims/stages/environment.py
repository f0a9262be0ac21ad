"""The job's environment contract (the original's variable names, plus ours with an IMS_ prefix)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ims.domain.jobs import default_kernel_file_name

_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n", ""}
_ARCHES = ("x86_64", "aarch64")
DEFAULT_ZSTD_LEVEL = 3
COMPRESSORS = ("gzip", "xz", "zstd", "lz4", "lzo", "lzma")
# Values that end up in sshd_config (SetEnv) or in log lines: one plain token each.
_TOKEN = re.compile(r"^[A-Za-z0-9._:@+-]*$")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._+-]")
DEFAULT_PUBLIC_KEY_FILE = Path("/etc/cray/authorized_keys")


class JobEnvironmentError(ValueError):
    """The job environment is missing something or holds a value that cannot be used."""


def plain_name(value: str, what: str) -> str:
    """A file name the job may use under a directory: no separators, no `..`, no control characters."""
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise JobEnvironmentError(f"{what} must be a plain file name, got {value!r}")
    if any(ord(ch) < 32 for ch in value):
        raise JobEnvironmentError(f"{what} must not contain control characters")
    return value


def token(value: str, what: str) -> str:
    if not _TOKEN.match(value):
        raise JobEnvironmentError(f"{what} holds characters that are not allowed: {value!r}")
    return value


def as_bool(value: str | None, what: str, default: bool = False) -> bool:
    if value is None:
        return default
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise JobEnvironmentError(f"{what} must be true or false, got {value!r}")


def _number(env: Mapping[str, str], name: str, default: float, minimum: float = 0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise JobEnvironmentError(f"{name} must be a number, got {raw!r}") from exc
    if value < minimum:
        raise JobEnvironmentError(f"{name} must be at least {minimum}")
    return value


def _s3_verify(raw: str | None, ca_cert: str) -> bool | str:
    """How to verify presigned S3 URLs: S3_SSL_VALIDATE when set (not a secret), else like IMS (CA_CERT)."""
    if raw is None:
        return ca_cert or True
    word = raw.strip()
    if word.lower() in _FALSE:
        return False
    if word.lower() in _TRUE:
        return True
    return word  # a CA bundle path, as boto's `verify` takes it


@dataclass(frozen=True)
class JobEnvironment:
    job_id: str
    image_root_parent: Path
    image_root_archive_name: str = ""
    download_url: str = field(default="", repr=False)  # presigned: carries a signature
    download_md5sum: str = ""
    kernel_filename: str = "vmlinuz"
    initrd_filename: str = "initrd"
    kernel_parameters_filename: str = "kernel-parameters"
    ssh_jail: bool = False
    build_arch: str = "x86_64"
    dkms_enabled: bool = False
    remote_build_node: str = ""
    ims_url: str = ""
    # The job's own bearer token (IMS_JOB_TOKEN): the only credential a job holds. No S3 keys: artifacts move
    # through presigned URLs that IMS signs for exactly this job's keys (ims.client.job_uploads).
    ims_token: str = field(default="", repr=False)
    ca_cert: str = ""
    s3_verify: bool | str = True  # for presigned URLs
    boot_images_bucket: str = "boot-images"
    squashfs_compressor: str = "zstd"
    squashfs_level: int | None = None
    ssh_port: int = 22
    ssh_listen: str = "127.0.0.1"
    public_key: str = field(default="", repr=False)
    # How often the flags are looked for: a stat of two paths, cheap enough to do ten times a second.
    poll_seconds: float = 0.1
    # After the verdict, sshd stays up this long so the session that wrote the flag (CFS's teardown over
    # paramiko, a person's `touch`) gets its exit status before sshd goes.
    session_grace_seconds: float = 2.0
    user_wait_limit: float = 0.0  # 0: wait for the user as long as it takes, like the original
    download_attempts: int = 20
    download_retry_seconds: float = 10.0
    upload_part_mib: int = 64  # S3 part size of the uploads (the first part is at most 8 MiB)
    # The session sandbox's network (IMS_JOB_NETWORK): "isolated", "host", or "" to choose by whether
    # slirp4netns is installed on the host that runs the job (ims.stages.slirp).
    job_network: str = ""

    # --- the /mnt/image layout
    @property
    def image_root(self) -> Path:
        return self.image_root_parent / "image-root"

    @property
    def image_archive(self) -> Path:
        return self.image_root_parent / "image.sqsh"

    @property
    def sshd_dir(self) -> Path:
        return self.image_root_parent / "sshd"

    @property
    def output_archive(self) -> Path:
        """Where the packaged root goes; the name is the image name made safe for a file system."""
        safe = _UNSAFE_FILE_CHARS.sub("_", self.image_root_archive_name)[:200].lstrip(".") or "rootfs"
        return self.image_root_parent / f"{safe}.sqsh"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JobEnvironment:
        env = os.environ if env is None else env
        job_id = env.get("IMS_JOB_ID", "").strip()
        if not job_id:
            raise JobEnvironmentError("IMS_JOB_ID is not set")
        token(job_id, "IMS_JOB_ID")

        arch = env.get("BUILD_ARCH", "").strip() or "x86_64"
        if arch not in _ARCHES:
            raise JobEnvironmentError(f"BUILD_ARCH must be one of {', '.join(_ARCHES)}, got {arch!r}")
        kernel = env.get("KERNEL_FILENAME", "").strip() or default_kernel_file_name(arch)
        if arch == "aarch64" and kernel == "vmlinuz":
            kernel = "Image"  # the original forces the arm64 kernel name the same way

        compressor = env.get("IMS_SQUASHFS_COMPRESSOR", "").strip() or "zstd"
        if compressor not in COMPRESSORS:
            raise JobEnvironmentError(f"IMS_SQUASHFS_COMPRESSOR must be one of {', '.join(COMPRESSORS)}")
        level_raw = env.get("IMS_SQUASHFS_LEVEL", "").strip()
        level = int(_number(env, "IMS_SQUASHFS_LEVEL", 0, 1)) if level_raw else None
        if level is None and compressor == "zstd":
            # mksquashfs's own zstd default (15) took 154 s for 663 MB of libraries here, level 3 took 5.6 s
            # for a 16% larger archive: a repack the user waits for should not take minutes.
            level = DEFAULT_ZSTD_LEVEL

        listen = env.get("IMS_SSH_LISTEN", "").strip() or "127.0.0.1"
        try:
            ipaddress.ip_address(listen)
        except ValueError as exc:
            raise JobEnvironmentError(f"IMS_SSH_LISTEN must be an IP address, got {listen!r}") from exc
        port = int(_number(env, "IMS_SSH_PORT", 22, 1))
        if port > 65535:
            raise JobEnvironmentError("IMS_SSH_PORT must be at most 65535")

        network = env.get("IMS_JOB_NETWORK", "").strip().lower()
        if network == "auto":
            network = ""
        if network not in ("", "isolated", "host"):
            raise JobEnvironmentError(f"IMS_JOB_NETWORK must be isolated or host, got {network!r}")

        md5 = env.get("DOWNLOAD_MD5SUM", "").strip().lower()
        if md5 and not re.fullmatch(r"[0-9a-f]{32}", md5):
            raise JobEnvironmentError(f"DOWNLOAD_MD5SUM is not an md5 hex digest: {md5!r}")

        return cls(
            job_id=job_id,
            image_root_parent=Path(env.get("IMAGE_ROOT_PARENT", "").strip() or "/mnt/image"),
            image_root_archive_name=env.get("IMAGE_ROOT_ARCHIVE_NAME", "").strip(),
            download_url=env.get("DOWNLOAD_URL", "").strip(),
            download_md5sum=md5,
            kernel_filename=plain_name(kernel, "KERNEL_FILENAME"),
            initrd_filename=plain_name(env.get("INITRD_FILENAME", "").strip() or "initrd", "INITRD_FILENAME"),
            kernel_parameters_filename=plain_name(
                env.get("KERNEL_PARAMETERS_FILENAME", "").strip() or "kernel-parameters",
                "KERNEL_PARAMETERS_FILENAME",
            ),
            ssh_jail=as_bool(env.get("SSH_JAIL"), "SSH_JAIL"),
            build_arch=arch,
            dkms_enabled=as_bool(env.get("JOB_ENABLE_DKMS"), "JOB_ENABLE_DKMS"),
            remote_build_node=token(env.get("REMOTE_BUILD_NODE", "").strip(), "REMOTE_BUILD_NODE"),
            ims_url=env.get("IMS_URL", "").strip(),
            ims_token=env.get("IMS_JOB_TOKEN", "").strip(),
            ca_cert=env.get("CA_CERT", "").strip(),
            s3_verify=_s3_verify(env.get("S3_SSL_VALIDATE", env.get("S3_SSL_VERIFY")), env.get("CA_CERT", "").strip()),
            boot_images_bucket=env.get("S3_BOOT_IMAGES_BUCKET", "").strip() or "boot-images",
            squashfs_compressor=compressor,
            squashfs_level=level,
            ssh_port=port,
            ssh_listen=listen,
            public_key=_public_key(env),
            poll_seconds=_number(env, "IMS_POLL_SECONDS", 0.1, 0.05),
            session_grace_seconds=_number(env, "IMS_SSH_GRACE_SECONDS", 2.0),
            user_wait_limit=_number(env, "IMS_JOB_USER_WAIT_LIMIT", 0.0),
            download_attempts=max(1, int(_number(env, "IMS_DOWNLOAD_ATTEMPTS", 20, 1))),
            download_retry_seconds=_number(env, "IMS_DOWNLOAD_RETRY_SECONDS", 10.0),
            upload_part_mib=int(_number(env, "IMS_UPLOAD_PART_MIB", 64, 5)),
            job_network=network,
        )


def _public_key(env: Mapping[str, str]) -> str:
    # The original mounts the key from the job ConfigMap and also injects it as env `public_key`.
    text = env.get("IMS_PUBLIC_KEY") or env.get("public_key") or ""
    if not text and DEFAULT_PUBLIC_KEY_FILE.is_file():
        text = DEFAULT_PUBLIC_KEY_FILE.read_text()
    return text.strip()
