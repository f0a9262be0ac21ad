"""Helpers for the stage tests: job environments, a readable job log, SSH client calls."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ims.artifacts.s3 import S3Config
from ims.client.http import ImsClient
from ims.stages.environment import JobEnvironment
from ims.stages.reporting import Reporter


@dataclass(frozen=True)
class LocalImage:
    root: Path
    archive: Path


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: str


def make_keypair(directory: Path, name: str) -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return KeyPair(key, key.with_name(name + ".pub").read_text())


def base_env(job_dir: Path, s3_config: S3Config | None = None, **extra: str) -> dict[str, str]:
    env = {
        "IMS_JOB_ID": str(uuid.uuid4()),
        "IMAGE_ROOT_PARENT": str(job_dir),
        "IMAGE_ROOT_ARCHIVE_NAME": "customized image",
        "BUILD_ARCH": "x86_64",
        "IMS_POLL_SECONDS": "0.2",
        "IMS_DOWNLOAD_RETRY_SECONDS": "0.2",
        "IMS_DOWNLOAD_ATTEMPTS": "3",
    }
    if s3_config is not None:
        env.update(
            {
                "S3_ENDPOINT": s3_config.endpoint,
                "S3_ACCESS_KEY": s3_config.access_key,
                "S3_SECRET_KEY": s3_config.secret_key,
            }
        )
    env.update(extra)
    return env


class LogBuffer:
    """A thread-safe text sink for a Reporter, so tests can read the job log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        with self._lock:
            self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)


def reporter_for(env: JobEnvironment, client: ImsClient | None = None) -> tuple[Reporter, LogBuffer]:
    log = LogBuffer()
    return Reporter(env.job_id, client, out=log), log  # type: ignore[arg-type]


@dataclass
class Background:
    """Run a blocking stage function in a thread and keep its result or exception."""

    target: Callable[[], Any]
    result: Any = None
    error: BaseException | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.target()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 60) -> Any:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError("stage did not finish")
        if self.error is not None:
            raise self.error
        return self.result


def ssh(
    key: KeyPair, port: int, command: str, timeout: float = 30, host: str = "127.0.0.1"
) -> subprocess.CompletedProcess[str]:
    """The stock OpenSSH client, as a user or CFS would call it."""
    return subprocess.run(
        [
            "ssh",
            "-i",
            str(key.private),
            "-p",
            str(port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            f"root@{host}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def wait_for_banner(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(8).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"no sshd on port {port}")


def wait_for(predicate: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def unpack(archive: Path, dest: Path) -> Path:
    subprocess.run(["unsquashfs", "-no-progress", "-f", "-d", str(dest), str(archive)], check=True, capture_output=True)
    return dest
