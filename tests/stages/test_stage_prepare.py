"""prepare: download through a presigned SeaweedFS URL, check md5, unsquashfs into image-root."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.stages.kit import base_env, reporter_for
from tests.support.images import RegisteredImage

from ims.artifacts.s3 import ArtifactStore, S3Config
from ims.stages.environment import JobEnvironment
from ims.stages.prepare import prepare
from ims.stages.reporting import StageError, run_stage


def test_prepare_downloads_checks_md5_and_unpacks(
    job_dir: Path, registered_image: RegisteredImage, artifact_store: ArtifactStore, s3_config: S3Config
) -> None:
    url = artifact_store.presign_get(registered_image.rootfs, expires=600)
    (job_dir / "complete").write_text("stale")  # left by an earlier run: must not end the new job
    env = JobEnvironment.from_env(
        base_env(job_dir, s3_config, DOWNLOAD_URL=url, DOWNLOAD_MD5SUM=registered_image.rootfs_md5)
    )
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
    assert registered_image.rootfs_md5 in text
    assert "X-Amz-Signature" not in text  # the presigned URL is a credential


def test_prepare_refuses_a_wrong_md5(
    job_dir: Path, registered_image: RegisteredImage, artifact_store: ArtifactStore, s3_config: S3Config
) -> None:
    url = artifact_store.presign_get(registered_image.rootfs, expires=600)
    env = JobEnvironment.from_env(base_env(job_dir, s3_config, DOWNLOAD_URL=url, DOWNLOAD_MD5SUM="0" * 32))
    reporter, log = reporter_for(env)

    assert run_stage("prepare", reporter, lambda: prepare(env, reporter)) == 1

    assert "md5 mismatch" in log.text()
    assert "job status -> error (prepare: md5 mismatch" in log.text()
    assert not (job_dir / "image-root").exists()
    assert not (job_dir / "image.sqsh").exists()


def test_prepare_reports_an_expired_or_missing_object_without_leaking_the_url(
    job_dir: Path, artifact_store: ArtifactStore, s3_config: S3Config
) -> None:
    from ims.domain.links import S3Location

    url = artifact_store.presign_get(S3Location("boot-images", "no-such-image/rootfs"), expires=600)
    env = JobEnvironment.from_env(base_env(job_dir, s3_config, DOWNLOAD_URL=url))
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


def test_a_broken_transfer_resumes_with_a_range_request(tmp_path: Path) -> None:
    import hashlib
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ims.stages.download import download

    body = os.urandom(3 * 1024 * 1024 + 17)
    ranges: list[str] = []

    class Flaky(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            wanted = self.headers.get("Range")
            ranges.append(wanted or "")
            if wanted is None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 3])  # then the connection drops
                self.close_connection = True
                return
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            self.wfile.write(body[start:])

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        from tests.stages.kit import LogBuffer

        from ims.stages.reporting import Reporter

        log = LogBuffer()
        md5, size = download(
            f"http://127.0.0.1:{server.server_address[1]}/rootfs?X-Amz-Signature=secret",
            tmp_path / "image.sqsh",
            Reporter("job", None, out=log),  # type: ignore[arg-type]
            attempts=3,
            retry_seconds=0.05,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert (md5, size) == (hashlib.md5(body).hexdigest(), len(body))
    assert (tmp_path / "image.sqsh").read_bytes() == body
    assert ranges == ["", f"bytes={len(body) // 3}-"]
    assert "failed at" in log.text() and "secret" not in log.text()
