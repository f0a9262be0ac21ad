"""package: boot files from the image, mksquashfs, then the new image in IMS and S3 through presigned URLs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.stages.kit import KeyPair, LocalImage, base_env, reporter_for, unpack
from tests.support.images import KERNEL_VERSION, RegisteredImage, md5_of, read_from_squashfs
from tests.support.servers import ImsServer, start_ims_server

from ims.artifacts.s3 import ArtifactStore
from ims.client.http import ImsApiError, ImsClient
from ims.domain.links import S3Location
from ims.settings import load_settings
from ims.stages.environment import JobEnvironment
from ims.stages.package import boot_files, package, squash
from ims.stages.reporting import StageError
from ims.store import job_tokens
from ims.store.db import Database


def test_boot_files_follow_the_kernel_link_inside_the_image(job_dir: Path, test_image: LocalImage) -> None:
    root = unpack(test_image.archive, job_dir / "image-root")
    env = JobEnvironment.from_env(base_env(job_dir))
    kernel, initrd, parameters = boot_files(env, root)
    assert kernel == root / "boot" / f"vmlinuz-{KERNEL_VERSION}"
    assert initrd == root / "boot" / "initrd"
    assert parameters == root / "boot" / "kernel-parameters"


def test_missing_initrd_is_an_error_and_parameters_are_optional(job_dir: Path, test_image: LocalImage) -> None:
    root = unpack(test_image.archive, job_dir / "image-root")
    (root / "boot" / "kernel-parameters").unlink()
    env = JobEnvironment.from_env(base_env(job_dir))
    assert boot_files(env, root)[2] is None
    (root / "boot" / "initrd").unlink()
    (root / "boot" / "initrd").symlink_to("/etc")  # a directory is not an initrd
    with pytest.raises(StageError, match="/boot/initrd is not a regular file"):
        boot_files(env, root)


def test_squash_keeps_the_change_and_uses_zstd(job_dir: Path, test_image: LocalImage) -> None:
    root = unpack(test_image.archive, job_dir / "image-root")
    (root / "etc" / "motd").write_text("customized\n")
    env = JobEnvironment.from_env(base_env(job_dir, IMS_SQUASHFS_LEVEL="3"))
    reporter, log = reporter_for(env)

    archive = squash(env, reporter, root)

    assert archive == job_dir / "customized_image.sqsh"
    assert read_from_squashfs(archive, "etc/motd", job_dir) == b"customized\n"
    info = subprocess.run(["unsquashfs", "-s", str(archive)], capture_output=True, text=True, check=True).stdout
    assert "Compression zstd" in info
    assert "mksquashfs (zstd level 3)" in log.text()
    shutil.rmtree(root)


# --- packaging without S3 credentials: the job's token and IMS's presigned part URLs, against a real server


@dataclass(frozen=True)
class JobSeat:
    """A customize job record in a real `ims serve` (no workers: nothing launches it) and a token for it."""

    server: ImsServer
    job_id: str
    token: str


@dataclass(frozen=True)
class PackageServer:
    server: ImsServer
    database_url: str
    image_id: str
    key_id: str


@pytest.fixture(scope="module")
def package_server(
    work_root: Path, s3_env: dict[str, str], registered_image: RegisteredImage, user_key: KeyPair
) -> Iterator[PackageServer]:
    """A real `ims serve` without workers: a job posted there is a record that nothing launches."""
    data_dir = work_root / f"ims-package-{uuid.uuid4().hex[:8]}"
    server = start_ims_server(data_dir, s3_env, {"IMS_RUN_WORKERS": "false"})
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api:
            image = api.post("/v3/images", json={"name": "base", "link": registered_image.manifest_link})
            key = api.post("/v3/public-keys", json={"name": "user", "public_key": user_key.public})
        url = load_settings(IMS_DATA_DIR=str(data_dir), **s3_env).effective_database_url
        yield PackageServer(server, url, image.json()["id"], key.json()["id"])
    finally:
        server.stop()


@pytest.fixture
def job_seat(package_server: PackageServer) -> JobSeat:
    with httpx.Client(base_url=package_server.server.url, timeout=30) as api:
        job = api.post(
            "/v3/jobs",
            json={
                "job_type": "customize",
                "artifact_id": package_server.image_id,
                "public_key_id": package_server.key_id,
                "image_root_archive_name": "packaged",
            },
        )
        assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    # What the worker does at launch: mint the job's token (stored hashed) in the server's database.
    database = Database(package_server.database_url)
    try:
        with database.write() as conn:
            token = job_tokens.issue(conn, job_id)
    finally:
        database.dispose()
    assert token is not None
    return JobSeat(package_server.server, job_id, token)


def _multipart_etag(path: Path, first: int, size: int) -> str:
    digests = []
    data = path.read_bytes()
    bounds = [0, first, *range(first + size, len(data), size), len(data)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        if end > start:
            digests.append(hashlib.md5(data[start:end]).digest())
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


@pytest.mark.slow
def test_package_uploads_through_presigned_urls_with_only_the_job_token(
    job_dir: Path, test_image: LocalImage, job_seat: JobSeat, artifact_store: ArtifactStore
) -> None:
    root = unpack(test_image.archive, job_dir / "image-root")
    (root / "etc" / "motd").write_text("packaged\n")
    # Incompressible bytes: an archive of several 5 MiB parts, some sent while mksquashfs still writes.
    (root / "var" / "blob").write_bytes(os.urandom(18 * 1024 * 1024))
    env = JobEnvironment.from_env(
        base_env(
            job_dir,
            IMS_JOB_ID=job_seat.job_id,
            IMS_URL=job_seat.server.url,
            IMS_JOB_TOKEN=job_seat.token,
            IMS_UPLOAD_PART_MIB="5",
            IMS_SQUASHFS_LEVEL="3",
        )
    )
    assert not any(name.startswith("S3_") for name in os.environ if name in base_env(job_dir))
    with ImsClient(job_seat.server.url, token=job_seat.token) as client:
        reporter, log = reporter_for(env, client)
        result = package(env, reporter, client)
        with pytest.raises(ImsApiError) as ended:
            client.get_job(job_seat.job_id)
        assert ended.value.status == 401  # `success` ended the job's token
    job = httpx.get(f"{job_seat.server.url}/v3/jobs/{job_seat.job_id}", timeout=30).json()

    image_id = result.image["id"]
    assert job["resultant_image_id"] == image_id
    assert result.image["link"]["path"] == f"s3://boot-images/{image_id}/manifest.json"
    manifest_head = artifact_store.head(S3Location("boot-images", f"{image_id}/manifest.json"))
    assert manifest_head is not None and manifest_head.etag == result.image["link"]["etag"]
    assert manifest_head.content_type == "application/json"
    body = artifact_store.read_bytes(S3Location("boot-images", f"{image_id}/manifest.json"))
    assert manifest_head.metadata == {"md5sum": hashlib.md5(body).hexdigest()}
    assert json.loads(body) == result.manifest
    names = {"kernel": root / "boot" / f"vmlinuz-{KERNEL_VERSION}", "initrd": root / "boot" / "initrd"}
    for artifact in result.manifest["artifacts"]:
        location = S3Location.parse(artifact["link"]["path"])
        head = artifact_store.head(location)
        assert head is not None and head.etag == artifact["link"]["etag"]
        assert head.content_type == "application/octet-stream"
        assert head.metadata == {
            "md5sum": artifact["md5"],
            "x-shasta-ims-image-name": "customized image",
            "x-shasta-ims-image-id": image_id,
            "x-shasta-ims-job-id": job_seat.job_id,
        }
        local = job_dir / f"got-{location.key.rsplit('/', 1)[1]}"
        artifact_store.download_file(location, local)
        assert md5_of(local) == artifact["md5"]
        kind = location.key.rsplit("/", 1)[1]
        if kind in names:
            assert local.read_bytes() == names[kind].read_bytes()
        if kind == "rootfs":
            rootfs = local
    # The rootfs: squashed from the root, its md5 and its multipart ETag those of the final file
    # (mksquashfs wrote the superblock last; part 1 went up only then).
    assert read_from_squashfs(rootfs, "etc/motd", job_dir) == b"packaged\n"
    rootfs_head = artifact_store.head(S3Location("boot-images", f"{image_id}/rootfs"))
    assert rootfs_head is not None
    assert rootfs_head.etag == _multipart_etag(rootfs, 5 * 1024 * 1024, 5 * 1024 * 1024)
    assert rootfs_head.etag.endswith(f"-{-(-rootfs.stat().st_size // (5 * 1024 * 1024))}")
    text = log.text()
    assert "parts sent while it wrote" in text and "job status -> success" in text
    assert "X-Amz-Signature" not in text
    assert not env.output_archive.exists()
    shutil.rmtree(root)


def _writer_like_mksquashfs(path: Path, chunks: list[bytes], superblock: bytes, truncate_to: int, started: Any) -> None:
    """Write front to back, go back with ftruncate and write on (a duplicate found late), superblock last."""
    with path.open("wb") as out:
        out.write(b"\0" * len(superblock))
        started.set()
        for chunk in chunks[:-2]:
            out.write(chunk)
            out.flush()
            time.sleep(0.15)  # slower than the poll: parts go up meanwhile
        out.truncate(truncate_to)
        out.seek(truncate_to)
        for chunk in chunks[-2:]:
            out.write(chunk)
            out.flush()
            time.sleep(0.15)
        out.seek(0)
        out.write(superblock)


@pytest.mark.slow
def test_an_overlapped_upload_sends_again_what_the_writer_rewrote(
    job_dir: Path, job_seat: JobSeat, artifact_store: ArtifactStore
) -> None:
    import threading

    from ims.client.job_uploads import JobArtifactSink

    mib = 1024 * 1024
    chunks = [os.urandom(2 * mib) for _ in range(14)]
    path = job_dir / "growing.sqsh"
    with ImsClient(job_seat.server.url, token=job_seat.token) as client:
        image = client.create_image("overlapped", "x86_64")
        started = threading.Event()
        writer = threading.Thread(
            target=_writer_like_mksquashfs, args=(path, chunks, os.urandom(96), 13 * mib, started), daemon=True
        )
        with JobArtifactSink(client, job_seat.job_id, part_size=5 * mib) as sink:
            upload = sink.start(S3Location("boot-images", f"{image['id']}/rootfs"), path)
            upload.margin = 0  # send each part as soon as it is written: the truncation then hits sent parts
            writer.start()
            started.wait(10)
            upload.follow(writer.is_alive, poll_seconds=0.02)
            writer.join()
            done = upload.finish({"x-shasta-ims-image-id": image["id"]})

    final = path.read_bytes()
    assert len(final) == 13 * mib + 4 * mib
    assert upload.early_parts >= 2  # parts 2.. went up while the writer wrote
    assert upload.resent >= 1  # the part the truncation rewrote went up again
    assert done.md5 == hashlib.md5(final).hexdigest()
    head = artifact_store.head(S3Location("boot-images", f"{image['id']}/rootfs"))
    assert head is not None
    assert head.metadata["md5sum"] == done.md5
    assert head.size == len(final) == done.size
    assert head.etag == done.etag == _multipart_etag(path, 5 * mib, 5 * mib)
    fetched = job_dir / "fetched"
    artifact_store.download_file(S3Location("boot-images", f"{image['id']}/rootfs"), fetched)
    assert fetched.read_bytes() == final


@pytest.mark.slow
def test_publish_of_finished_artifacts_goes_the_same_way(
    job_dir: Path, test_image: LocalImage, job_seat: JobSeat, artifact_store: ArtifactStore
) -> None:
    """A create job's kiwi `kis` result: kernel, initrd and squashfs published as they are, with the token."""
    from ims.stages.package import publish

    boot = test_image.root / "boot"
    env = JobEnvironment.from_env(
        base_env(job_dir, IMS_JOB_ID=job_seat.job_id, IMS_URL=job_seat.server.url, IMS_JOB_TOKEN=job_seat.token)
    )
    with ImsClient(job_seat.server.url, token=job_seat.token) as client:
        reporter, log = reporter_for(env, client)
        result = publish(
            env,
            reporter,
            client,
            rootfs=test_image.archive,
            kernel=boot / f"vmlinuz-{KERNEL_VERSION}",
            initrd=boot / "initrd",
            parameters=None,
        )
    kinds = [artifact["type"] for artifact in result.manifest["artifacts"]]
    assert kinds == [
        "application/vnd.cray.image.rootfs.squashfs",
        "application/vnd.cray.image.kernel",
        "application/vnd.cray.image.initrd",
    ]
    rootfs = artifact_store.head(S3Location("boot-images", f"{result.image['id']}/rootfs"))
    assert rootfs is not None and rootfs.metadata["md5sum"] == md5_of(test_image.archive)
    assert rootfs.etag == result.manifest["artifacts"][0]["link"]["etag"]
    assert "job status -> success" in log.text()
