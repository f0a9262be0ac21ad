"""Shared fixtures: a SeaweedFS S3 for the session, IMS servers, a throw-away PostgreSQL cluster."""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ims.artifacts.s3 import ArtifactStore, S3Config
from ims.embedded.seaweedfs import SeaweedFS
from tests.support.servers import ImsServer, PostgresCluster, start_ims_server

BUCKETS = ["ims", "boot-images"]


@pytest.fixture(scope="session")
def work_root() -> Iterator[Path]:
    # Not under /tmp's sticky 1777 tree where it matters (sshd ChrootDirectory); tests may make subdirs.
    root = Path(tempfile.mkdtemp(prefix="ims-tests-", dir=os.environ.get("IMS_TEST_ROOT") or None))
    yield root
    # A whole run leaves gigabytes here (S3 volumes, images, job roots); runs that kept them filled the disk
    # until S3 failed. `--one-file-system`: whatever a test left mounted under it is not walked into.
    # IMS_TEST_KEEP=1 keeps the tree for a look after a failure.
    if not os.environ.get("IMS_TEST_KEEP"):
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)


@pytest.fixture(scope="session")
def seaweedfs(work_root: Path) -> Iterator[SeaweedFS]:
    server = SeaweedFS(work_root / "seaweedfs")
    server.start()
    ArtifactStore(server.s3_config()).ensure_buckets(BUCKETS)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_config(seaweedfs: SeaweedFS) -> S3Config:
    return seaweedfs.s3_config()


@pytest.fixture(scope="session")
def artifact_store(s3_config: S3Config) -> ArtifactStore:
    return ArtifactStore(s3_config)


@pytest.fixture(scope="session")
def s3_env(s3_config: S3Config) -> dict[str, str]:
    return {
        "S3_ENDPOINT": s3_config.endpoint,
        "S3_ACCESS_KEY": s3_config.access_key,
        "S3_SECRET_KEY": s3_config.secret_key,
    }


@pytest.fixture(scope="session")
def ims_server(work_root: Path, s3_env: dict[str, str]) -> Iterator[ImsServer]:
    """One IMS server (SQLite) shared by the session's API tests."""
    server = start_ims_server(work_root / "ims-shared", s3_env)
    yield server
    server.stop()


@pytest.fixture
def fresh_ims_server(work_root: Path, s3_env: dict[str, str]) -> Iterator[ImsServer]:
    """An IMS server with an empty database of its own."""
    server = start_ims_server(work_root / f"ims-{uuid.uuid4().hex[:8]}", s3_env)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(work_root: Path) -> Iterator[PostgresCluster]:
    work_root.chmod(work_root.stat().st_mode | 0o011)  # mkdtemp's 0700 keeps the postgres user out
    cluster = PostgresCluster.start(work_root / "postgres")
    yield cluster
    cluster.stop()
