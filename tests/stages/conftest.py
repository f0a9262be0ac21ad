"""Fixtures for the job stages: a real test image (local and in S3), job directories, SSH keys."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from tests.stages.kit import KeyPair, LocalImage, make_keypair
from tests.support.images import RegisteredImage, build_image_root, register_in_s3, squash

from ims.artifacts.s3 import ArtifactStore
from ims.embedded.ports import free_port


@pytest.fixture(scope="session")
def test_image(work_root: Path) -> LocalImage:
    base = work_root / "stages-image"
    root = build_image_root(base / "root", marker="base")
    return LocalImage(root, squash(root, base / "image.sqsh"))


@pytest.fixture(scope="session")
def registered_image(artifact_store: ArtifactStore, test_image: LocalImage) -> RegisteredImage:
    return register_in_s3(artifact_store, test_image.root, test_image.archive)


@pytest.fixture
def job_dir(work_root: Path) -> Path:
    path = work_root / "jobs" / uuid.uuid4().hex[:10]
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="session")
def user_key(work_root: Path) -> KeyPair:
    return make_keypair(work_root / "keys", "user")


@pytest.fixture(scope="session")
def other_key(work_root: Path) -> KeyPair:
    return make_keypair(work_root / "keys", "other")


@pytest.fixture
def ssh_port() -> int:
    return free_port()
