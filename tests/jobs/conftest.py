"""Fixtures for job tests: an IMS whose jobs run for real (LocalRunner, sshd, squashfs-tools)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.jobs.kit import add_public_key, delete_all_jobs, start_job_server
from tests.stages.kit import KeyPair, LocalImage, make_keypair
from tests.support.images import RegisteredImage, build_image_root, register_in_s3, squash
from tests.support.servers import ImsServer

from ims.artifacts.s3 import ArtifactStore


@pytest.fixture(scope="session")
def base_image(work_root: Path) -> LocalImage:
    base = work_root / "jobs-base-image"
    root = build_image_root(base / "root", marker="base")
    return LocalImage(root, squash(root, base / "image.sqsh"))


@pytest.fixture
def stored_image(artifact_store: ArtifactStore, base_image: LocalImage) -> RegisteredImage:
    """A fresh copy of the base image in S3 (each job's source is its own image)."""
    return register_in_s3(artifact_store, base_image.root, base_image.archive)


@pytest.fixture(scope="session")
def job_key(work_root: Path) -> KeyPair:
    return make_keypair(work_root / "job-keys", "user")


@pytest.fixture(scope="session")
def second_key(work_root: Path) -> KeyPair:
    return make_keypair(work_root / "job-keys", "second")


@pytest.fixture(scope="module")
def job_server(work_root: Path, s3_env: dict[str, str]) -> Iterator[ImsServer]:
    server = start_job_server(work_root, s3_env, IMS_JOB_HEARTBEAT_TIMEOUT="6")
    yield server
    delete_all_jobs(server)
    server.stop()


@pytest.fixture(scope="module")
def jobs_api(job_server: ImsServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=job_server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def key_id(jobs_api: httpx.Client, job_key: KeyPair) -> str:
    return add_public_key(jobs_api, job_key)
