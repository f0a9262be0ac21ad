"""Customize stage 1: fetch the image's root file system and unpack it into `<parent>/image-root`."""

from __future__ import annotations

import time

from ims.stages.download import download
from ims.stages.environment import JobEnvironment
from ims.stages.reporting import Reporter, StageError
from ims.stages.signals import STALE_AT_START, SignalPlaces
from ims.stages.tools import cpu_count, run_tool


def prepare(env: JobEnvironment, reporter: Reporter) -> None:
    reporter.status("fetching_image")
    if not env.download_url:
        raise StageError("DOWNLOAD_URL is not set")
    parent = env.image_root_parent
    parent.mkdir(parents=True, exist_ok=True)
    SignalPlaces(parent, None).clear(STALE_AT_START)

    archive = env.image_archive
    start = time.monotonic()
    verify = env.s3.verify if env.s3 is not None else (env.ca_cert or True)
    md5, size = download(
        env.download_url,
        archive,
        reporter,
        attempts=env.download_attempts,
        retry_seconds=env.download_retry_seconds,
        verify=verify,
    )
    seconds = max(time.monotonic() - start, 1e-6)
    reporter.say(f"downloaded {size} bytes in {seconds:.2f} s ({size / seconds / 1e6:.1f} MB/s), md5 {md5}")
    if env.download_md5sum and md5 != env.download_md5sum:
        archive.unlink(missing_ok=True)
        raise StageError(f"md5 mismatch for the downloaded image: expected {env.download_md5sum}, got {md5}")

    with reporter.timed(f"unsquashfs into {env.image_root}"):
        run_tool(
            [
                "unsquashfs",
                "-no-progress",
                "-processors",
                str(cpu_count()),
                "-f",
                "-d",
                str(env.image_root),
                str(archive),
            ],
            reporter,
        )
    archive.unlink()
    # A flag packaged into the image by an earlier jailed customize must not end this job at once.
    SignalPlaces(parent, env.image_root).clear()
