"""prepare: download through a presigned SeaweedFS URL, check md5, unsquashfs into image-root."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.stages.kit import KeyPair, base_env, reporter_for
from tests.support.images import RegisteredImage
from tests.support.servers import ImsServer

from ims.artifacts.s3 import ArtifactStore
from ims.stages.environment import JobEnvironment
from ims.stages.prepare import prepare
from ims.stages.reporting import StageError, run_stage


def test_prepare_downloads_checks_md5_and_unpacks(
    job_dir: Path, registered_image: RegisteredImage, artifact_store: ArtifactStore
) -> None:
    url = artifact_store.presign_get(registered_image.rootfs, expires=600)
    (job_dir / "complete").write_text("stale")  # left by an earlier run: must not end the new job
    env = JobEnvironment.from_env(base_env(job_dir, DOWNLOAD_URL=url, DOWNLOAD_MD5SUM=registered_image.rootfs_md5))
    reporter, log = reporter_for(env)

    prepare(env, reporter)

    root = job_dir / "image-root"
    assert (root / "etc" / "os-release").read_text().count('VERSION_ID="base"') == 1
    assert (root / "boot" / "vmlinuz").is_symlink()
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert not (job_dir / "image.sqsh").exists()
    assert not (job_dir / "complete").exists()
    text = log.text()
    assert "job status -> fetching_image" in text
    assert "(the archive in memory): done in" in text  # a small image never touches the disk
    assert registered_image.rootfs_md5 in text
    assert "X-Amz-Signature" not in text  # the presigned URL is a credential
    assert _open_memory_files() == []  # freed once unpacked


def _open_memory_files() -> list[str]:
    import os

    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return [target for target in targets if target.startswith("/memfd:")]


def test_an_archive_goes_to_memory_when_it_fits_and_to_disk_when_not(tmp_path: Path) -> None:
    import subprocess

    from ims.stages.scratch import ArchiveScratch, memory_available

    assert memory_available() > 0
    on_disk = ArchiveScratch(tmp_path / "big.sqsh")
    assert on_disk.place(memory_available()) == tmp_path / "big.sqsh"  # more than a quarter: the disk
    assert (on_disk.in_memory, on_disk.pass_fds) == (False, ())
    on_disk.path.write_bytes(b"x")
    on_disk.close()
    assert not (tmp_path / "big.sqsh").exists()

    in_memory = ArchiveScratch(tmp_path / "small.sqsh")
    path = in_memory.place(5)
    assert in_memory.in_memory and str(path).startswith("/proc/self/fd/")
    path.write_bytes(b"bytes")
    # A tool reads it by that path when it is given the descriptor, and only then.
    seen = subprocess.run(["cat", str(path)], pass_fds=in_memory.pass_fds, capture_output=True, check=True)
    assert seen.stdout == b"bytes"
    assert subprocess.run(["cat", str(path)], capture_output=True).returncode != 0
    assert not (tmp_path / "small.sqsh").exists()
    in_memory.close()
    assert _open_memory_files() == [] and in_memory.path == tmp_path / "small.sqsh"


def test_prepare_refuses_a_wrong_md5(
    job_dir: Path, registered_image: RegisteredImage, artifact_store: ArtifactStore
) -> None:
    url = artifact_store.presign_get(registered_image.rootfs, expires=600)
    env = JobEnvironment.from_env(base_env(job_dir, DOWNLOAD_URL=url, DOWNLOAD_MD5SUM="0" * 32))
    reporter, log = reporter_for(env)

    assert run_stage("prepare", reporter, lambda: prepare(env, reporter)) == 1

    assert "md5 mismatch" in log.text()
    assert "job status -> error (prepare: md5 mismatch" in log.text()
    assert not (job_dir / "image-root").exists()
    assert not (job_dir / "image.sqsh").exists()


def test_prepare_reports_a_missing_object_without_leaking_the_url(job_dir: Path, artifact_store: ArtifactStore) -> None:
    from ims.domain.links import S3Location

    url = artifact_store.presign_get(S3Location("boot-images", "no-such-image/rootfs"), expires=600)
    env = JobEnvironment.from_env(base_env(job_dir, DOWNLOAD_URL=url))
    reporter, log = reporter_for(env)

    with pytest.raises(StageError, match="HTTP 404") as failure:
        prepare(env, reporter)
    assert "X-Amz" not in str(failure.value)
    assert "no-such-image/rootfs" in str(failure.value)


def test_prepare_retries_then_gives_up_on_an_unreachable_url(job_dir: Path) -> None:
    from ims.embedded.ports import free_port

    url = f"http://127.0.0.1:{free_port()}/boot-images/x/rootfs?X-Amz-Signature=secret"
    env = JobEnvironment.from_env(base_env(job_dir, DOWNLOAD_URL=url))
    reporter, log = reporter_for(env)

    with pytest.raises(StageError, match="after 3 attempts"):
        prepare(env, reporter)
    assert log.text().count("download attempt") == 2
    assert "secret" not in log.text()


class _RangeServer:
    """A local HTTP server for `body` that honours ranges and breaks chosen answers midway."""

    def __init__(self, body: bytes, break_at: set[int], honour_ranges: bool = True) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.ranges: list[str] = []
        broken: set[int] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                wanted = self.headers.get("Range")
                outer.ranges.append(wanted or "")
                first, last = 0, len(body) - 1
                if wanted and honour_ranges:
                    low, _, high = wanted.removeprefix("bytes=").partition("-")
                    first, last = int(low), min(int(high) if high else len(body) - 1, len(body) - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {first}-{last}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(last - first + 1))
                self.send_header("ETag", '"0123456789abcdef0123456789abcdef-3"')
                self.end_headers()
                cut = next((at for at in break_at - broken if first <= at <= last), None)
                if cut is not None:
                    broken.add(cut)
                    self.wfile.write(body[first:cut])  # then the connection drops
                    self.close_connection = True
                    return
                self.wfile.write(body[first : last + 1])

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/rootfs?X-Amz-Signature=secret"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("honour_ranges", [True, False], ids=["ranged", "server-ignores-ranges"])
def test_a_broken_transfer_resumes_with_a_range_request(tmp_path: Path, honour_ranges: bool) -> None:
    import hashlib
    import os

    from tests.stages.kit import LogBuffer

    from ims.stages.download import download
    from ims.stages.reporting import Reporter

    block = 1024 * 1024
    body = os.urandom(3 * block + 17)
    cut = block + block // 3  # inside the second block
    server = _RangeServer(body, {cut}, honour_ranges)
    log = LogBuffer()
    try:
        result = download(
            server.url,
            tmp_path / "image.sqsh",
            Reporter("job", None, out=log),  # type: ignore[arg-type]
            attempts=3,
            retry_seconds=0.05,
            block=block,
            streams=2,
        )
    finally:
        server.close()
    assert (result.md5(), result.size) == (hashlib.md5(body).hexdigest(), len(body))
    assert result.md5_source == "hashed while downloading"  # a multipart ETag is never taken for the md5
    assert (tmp_path / "image.sqsh").read_bytes() == body
    if honour_ranges:
        # Four blocks; the broken one is asked for again from the byte where it stopped.
        assert f"bytes={cut}-{2 * block - 1}" in server.ranges
        assert sorted(server.ranges)[:1] == [f"bytes=0-{block - 1}"]
    else:
        assert server.ranges[0] == f"bytes=0-{block - 1}"  # ignored: the whole body came at once
    assert "failed at" in log.text() and "secret" not in log.text()


def test_a_single_part_etag_equal_to_the_md5_is_trusted_and_a_wrong_one_is_not(tmp_path: Path) -> None:
    import hashlib
    import os
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    from ims.stages.download import download
    from ims.stages.reporting import Reporter

    body = os.urandom(2 * 1024 * 1024)
    etags = [hashlib.md5(body).hexdigest(), "f" * 32]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            low, _, high = (self.headers.get("Range") or "bytes=0-").removeprefix("bytes=").partition("-")
            first, last = int(low), min(int(high or len(body) - 1), len(body) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(body)}")
            self.send_header("Content-Length", str(last - first + 1))
            self.send_header("ETag", f'"{etags[0]}"')
            self.end_headers()
            self.wfile.write(body[first : last + 1])

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/rootfs"
    reporter = Reporter("job", None)
    try:
        trusted = download(url, tmp_path / "a", reporter, expected_md5=etags[0], block=1024 * 1024)
        etags[0] = "f" * 32  # an ETag that is not the md5 (SSE-KMS, or a wrong object): hashed, and it shows
        hashed = download(url, tmp_path / "b", reporter, expected_md5=hashlib.md5(body).hexdigest())
    finally:
        server.shutdown()
        server.server_close()
    assert trusted.md5_source == "the object's single-part ETag"
    assert trusted.md5() == hashlib.md5(body).hexdigest()
    assert hashed.md5_source == "hashed while downloading"
    assert hashed.md5() == hashlib.md5(body).hexdigest()
    assert (tmp_path / "a").read_bytes() == body == (tmp_path / "b").read_bytes()


@pytest.mark.slow
def test_an_expired_download_url_is_signed_again_by_ims(
    fresh_ims_server: ImsServer,
    job_dir: Path,
    registered_image: RegisteredImage,
    artifact_store: ArtifactStore,
    user_key: KeyPair,
) -> None:
    """DOWNLOAD_URL was signed at launch; S3 refuses it once expired: IMS signs a new one for the job."""
    import time

    import httpx

    with httpx.Client(base_url=fresh_ims_server.url, timeout=30) as api:
        image = api.post("/v3/images", json={"name": "base", "link": registered_image.manifest_link})
        key = api.post("/v3/public-keys", json={"name": "user", "public_key": user_key.public})
        job = api.post(
            "/v3/jobs",
            json={
                "job_type": "customize",
                "artifact_id": image.json()["id"],
                "public_key_id": key.json()["id"],
                "image_root_archive_name": "resign",
            },
        )
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        try:
            expired = artifact_store.presign_get(registered_image.rootfs, expires=1)
            time.sleep(2)
            env = JobEnvironment.from_env(
                base_env(
                    job_dir,
                    IMS_JOB_ID=job_id,
                    IMS_URL=fresh_ims_server.url,
                    DOWNLOAD_URL=expired,
                    DOWNLOAD_MD5SUM=registered_image.rootfs_md5,
                )
            )
            reporter, log = reporter_for(env)
            prepare(env, reporter)
        finally:
            api.delete(f"/v3/jobs/{job_id}")
    text = log.text()
    assert "refused (expired?): asking IMS for a new one" in text
    assert registered_image.rootfs_md5 in text
    assert (job_dir / "image-root" / "etc" / "os-release").is_file()
    assert "X-Amz-Signature" not in text


def test_an_expired_url_without_ims_to_sign_again_is_refused(
    job_dir: Path, registered_image: RegisteredImage, artifact_store: ArtifactStore
) -> None:
    import time

    expired = artifact_store.presign_get(registered_image.rootfs, expires=1)
    time.sleep(2)
    env = JobEnvironment.from_env(base_env(job_dir, DOWNLOAD_URL=expired))
    reporter, _ = reporter_for(env)
    with pytest.raises(StageError, match="refused: HTTP 403"):
        prepare(env, reporter)
