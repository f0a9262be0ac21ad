"""Create-job builds of the shipped recipes: kiwi-ng run by hand against our stage functions.

Run as root: `python bench/kiwi_build.py [--recipe debian-bookworm|debian-bookworm-tbz] [--work DIR]
[--skip-hand] [--skip-stages]`. The recipe is templated with this machine's Debian archive (from apt's
sources). "By hand" is a plain `kiwi-ng system build` of the templated recipe; "stages" packs the recipe,
puts it into a SeaweedFS it starts itself (stopped by PID at the end), and runs fetch-recipe,
wait-for-repos and build-image as a job would, through a presigned URL.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ims  # noqa: E402
from ims.artifacts.s3 import ArtifactStore  # noqa: E402
from ims.client.recipes import pack_recipe  # noqa: E402
from ims.client.transfer import file_md5  # noqa: E402
from ims.domain.links import S3Location  # noqa: E402
from ims.embedded.seaweedfs import SeaweedFS  # noqa: E402
from ims.stages.apt_sources import debian_archive_uri  # noqa: E402
from ims.stages.build import ISOLATE_ARGV, BuildFailed, build_image, kiwi_executable  # noqa: E402
from ims.stages.create_env import CreateSettings  # noqa: E402
from ims.stages.environment import JobEnvironment  # noqa: E402
from ims.stages.recipe_fetch import fetch_recipe  # noqa: E402
from ims.stages.reporting import Reporter  # noqa: E402
from ims.stages.repos import wait_for_repos  # noqa: E402
from ims.stages.templating import render_recipe  # noqa: E402

RECIPES = Path(ims.__file__).parent / "recipes"


def _line(label: str, seconds: float, note: str = "") -> None:
    print(f"{label:44s} {seconds:8.1f} s  {note}", flush=True)


def _sizes(paths: list[Path]) -> str:
    return ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in paths if p.is_file())


def by_hand(recipe: str, work: Path, values: dict[str, str]) -> float:
    description = work / "hand" / recipe
    target = work / "hand" / f"{recipe}-out"
    shutil.copytree(RECIPES / recipe, description)
    render_recipe(description, values)
    argv = [
        kiwi_executable(CreateSettings()), "--logfile", str(work / "hand" / f"{recipe}.log"),
        "system", "build", "--description", str(description), "--target-dir", str(target),
    ]  # fmt: skip
    start = time.monotonic()
    # Own mount namespace, as the stage runs it: a broken build leaves no mounts on this host.
    result = subprocess.run(
        [*ISOLATE_ARGV, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        check=False,
    )
    seconds = time.monotonic() - start
    outputs = sorted(p for p in target.iterdir() if p.is_file() and p.suffix not in (".changes", ".packages"))
    _line(f"{recipe}: kiwi-ng by hand", seconds, f"rc {result.returncode}; {_sizes(outputs)}")
    shutil.rmtree(work / "hand", ignore_errors=True)
    return seconds


def through_stages(recipe: str, work: Path, values: dict[str, str], store: ArtifactStore) -> dict[str, float]:
    archive = work / f"{recipe}.tar.gz"
    pack_recipe(RECIPES / recipe, archive)
    location = S3Location("ims", f"recipes/bench-{recipe}/recipe.tar.gz")
    store.upload_file(archive, location)
    parent = work / "job" / recipe
    env = JobEnvironment.from_env(
        {
            "IMS_JOB_ID": f"bench-{recipe}",
            "IMAGE_ROOT_PARENT": str(parent),
            "DOWNLOAD_URL": store.presign_get(location),
            "DOWNLOAD_MD5SUM": file_md5(archive),
        }
    )
    log = io.StringIO()
    reporter = Reporter(env.job_id, None, log)
    settings = CreateSettings(template_dictionary=json.dumps(values), repos_timeout=120, repos_interval=5)
    timings: dict[str, float] = {}
    for name, stage in (
        ("fetch-recipe", fetch_recipe),
        ("wait-for-repos", wait_for_repos),
        ("build-image", build_image),
    ):
        start = time.monotonic()
        try:
            result = stage(env, reporter, settings)
        except BuildFailed as exc:
            result = f"FAILED: {exc}"
        timings[name] = time.monotonic() - start
        _line(f"{recipe}: stage {name}", timings[name], str(result)[:120] if name == "build-image" else "")
    shutil.rmtree(work / "job", ignore_errors=True)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", action="append", choices=["debian-bookworm", "debian-bookworm-tbz"])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--skip-hand", action="store_true")
    parser.add_argument("--skip-stages", action="store_true")
    args = parser.parse_args()
    recipes = args.recipe or ["debian-bookworm", "debian-bookworm-tbz"]
    work = Path(tempfile.mkdtemp(prefix="ims-bench-kiwi-", dir=args.work))
    values = {"debian_mirror": debian_archive_uri()}
    weed = SeaweedFS(work / "seaweedfs")
    weed.start()
    try:
        store = ArtifactStore(weed.s3_config())
        store.ensure_buckets(["ims"])
        summary: list[tuple[str, float]] = []
        for recipe in recipes:
            if not args.skip_hand:
                summary.append((f"{recipe}: kiwi-ng by hand", by_hand(recipe, work, values)))
            if not args.skip_stages:
                timings = through_stages(recipe, work, values, store)
                summary += [(f"{recipe}: stage {k}", v) for k, v in timings.items()]
                summary.append((f"{recipe}: stages total", sum(timings.values())))
        print("\nsummary")
        for label, seconds in summary:
            _line(f"  {label}", seconds)
    finally:
        weed.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
