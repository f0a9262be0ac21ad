"""Customize stage 1: fetch the image's root file system and unpack it into `<parent>/image-root`."""

from __future__ import annotations

import shutil

from ims.stages.download import fetch_job_artifact
from ims.stages.environment import JobEnvironment
from ims.stages.reporting import Reporter
from ims.stages.scratch import ArchiveScratch
from ims.stages.signals import STALE_AT_START, SignalPlaces
from ims.stages.tools import cpu_count, run_tool


def prepare(env: JobEnvironment, reporter: Reporter) -> None:
    reporter.status("fetching_image")
    parent = env.image_root_parent
    parent.mkdir(parents=True, exist_ok=True)
    SignalPlaces(parent, None).clear(STALE_AT_START)

    archive = ArchiveScratch(env.image_archive)

    def unpack() -> None:
        source = "memory" if archive.in_memory else str(archive.path)
        with reporter.timed(f"unsquashfs into {env.image_root} (the archive in {source})"):
            run_tool(
                [
                    "unsquashfs",
                    "-no-progress",
                    "-processors",
                    str(cpu_count()),
                    "-f",
                    "-d",
                    str(env.image_root),
                    str(archive.path),
                ],
                reporter,
                pass_fds=archive.pass_fds,
            )

    # unsquashfs starts as soon as the last byte is written; the md5 (taken while the bytes arrived, see
    # ims.stages.download) is checked before the user gets the image, and a mismatch discards what was unpacked.
    try:
        fetch_job_artifact(env, archive.place, reporter, "image", meanwhile=unpack)
    except BaseException:
        shutil.rmtree(env.image_root, ignore_errors=True)
        raise
    finally:
        archive.close()
    # A flag packaged into the image by an earlier jailed customize must not end this job at once.
    SignalPlaces(parent, env.image_root).clear()
