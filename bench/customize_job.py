"""A customize job end to end on a ~1 GB image root, next to the raw tools on the same bytes.

Run as root: `python bench/customize_job.py [--size-mb 1024] [--runs 3] [--work /var/tmp]`.

Builds the root of bench/customize_stages.py (busybox test root + half random blobs, half text in ~10k
files), squashes it with zstd level 3 (the package stage's default), registers it as an image in a private
SeaweedFS and starts `ims serve` (SQLite, default stage settings) on free ports. Each run times, on the same
bytes: raw unsquashfs, raw mksquashfs, boto3 upload_file/download_file, curl of a presigned URL; then a jailed
customize job: POST -> waiting_on_user, an SSH session (stock client) that touches a file, then
`touch /tmp/complete` -> success, with the stages' own figures read from the job log. Everything started is
stopped by PID; the jobs are deleted through the API first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/customize_job.py` puts bench/ first, not the root
    sys.path.insert(0, str(ROOT))

from bench.customize_stages import build_root, results, timed  # noqa: E402
from tests.jobs.kit import (  # noqa: E402
    add_image,
    add_public_key,
    jobs_dir,
    logs,
    post_customize,
    ssh_ok,
    ssh_signal,
    wait_gone,
    wait_status,
)
from tests.stages.kit import KeyPair, make_keypair  # noqa: E402
from tests.support.images import register_in_s3  # noqa: E402
from tests.support.servers import ImsServer, start_ims_server  # noqa: E402

from ims.artifacts.s3 import ArtifactStore, make_client  # noqa: E402
from ims.domain.links import S3Location  # noqa: E402
from ims.embedded.seaweedfs import SeaweedFS  # noqa: E402
from ims.stages.environment import DEFAULT_ZSTD_LEVEL  # noqa: E402
from ims.stages.tools import cpu_count  # noqa: E402

# Figures the stages write to the job log (ims.stages.prepare / package).
LOG_FIGURES = {
    "job: download (prepare)": r"downloaded image: \d+ bytes in ([\d.]+) s",
    "job: unsquashfs (prepare)": r"unsquashfs into .*: done in ([\d.]+) s",
    "job: md5 wait after unsquashfs (prepare)": r"md5 of the image: .*waited ([\d.]+) s",
    "job: mksquashfs, parts going up meanwhile (package)": r"mksquashfs \(.*\): done in ([\d.]+) s",
    "job: final md5 pass + last parts (package)": r"final pass and last parts in ([\d.]+) s",
    "job: record + squash + upload + manifest (package)": r"uploaded image \S+ in ([\d.]+) s",
}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def record(label: str, seconds: float) -> None:
    results.append((label, seconds, ""))
    print(f"{label:58s} {seconds:8.2f} s", flush=True)


def mksquashfs(root: Path, output: Path) -> None:
    """What the package stage runs by default (zstd level 3 on every CPU), without its log."""
    argv = ["mksquashfs", str(root), str(output), "-noappend", "-one-file-system", "-no-progress", "-quiet"]
    argv += ["-comp", "zstd", "-Xcompression-level", str(DEFAULT_ZSTD_LEVEL), "-processors", str(cpu_count())]
    subprocess.run(argv, check=True)


_CLK = os.sysconf("SC_CLK_TCK")
WEED_PID: list[int] = []  # SeaweedFS's process: its CPU counts for the transfers


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its reaped children, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / _CLK


def cpu_now() -> float:
    """CPU seconds used so far by this bench, the tools it ran, and SeaweedFS."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    tools = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + tools.ru_utime + tools.ru_stime
    return total + sum(_tree_cpu(pid) for pid in WEED_PID)


def cpu_timed(label: str, action: Callable[[], Any]) -> None:
    """`timed`, and the CPU seconds the step took (recorded as `cpu: <label>`)."""
    before = cpu_now()
    timed(label, action)
    record(f"cpu: {label}", cpu_now() - before)


def raw_tools(work: Path, root: Path, archive: Path, store: ArtifactStore, location: S3Location) -> None:
    """The job's steps done by hand on the same bytes: what a stage cannot beat."""
    dest = work / "unsq"
    shutil.rmtree(dest, ignore_errors=True)
    cpu_timed(
        "raw unsquashfs",
        lambda: subprocess.run(
            ["unsquashfs", "-no-progress", "-processors", str(cpu_count()), "-f", "-d", str(dest), str(archive)],
            check=True,
            stdout=subprocess.DEVNULL,
        ),
    )
    shutil.rmtree(dest, ignore_errors=True)
    scratch = work / "raw.sqsh"
    cpu_timed(f"raw mksquashfs zstd level {DEFAULT_ZSTD_LEVEL}", lambda: mksquashfs(root, scratch))
    scratch.unlink()
    raw = make_client(store.config)
    cpu_timed("raw boto3 upload_file", lambda: raw.upload_file(str(archive), "boot-images", "raw/rootfs"))
    # What the package stage has to do, done by hand at once on the same CPUs: mksquashfs of the root while an
    # archive of the same size goes up. On this machine both compete for the CPUs (SeaweedFS runs here too),
    # which max(mksquashfs, upload) leaves out.
    subprocess.run(["sync"], check=True)
    timed("raw mksquashfs and boto3 upload_file at once", lambda: _both_at_once(root, scratch, raw, archive))
    scratch.unlink()
    timed("raw boto3 download_file", lambda: raw.download_file("boot-images", "raw/rootfs", str(work / "dl.sqsh")))
    (work / "dl.sqsh").unlink()
    url = store.presign_get(location, 600)
    cpu_timed(
        "raw curl of a presigned URL",
        lambda: subprocess.run(["curl", "-sf", "-o", str(work / "curl.sqsh"), url], check=True),
    )
    # The job's own sequence, by hand: download then unpack with no sync between, so the unpack meets the
    # download's dirty pages as the job's does (the steps above each start after a sync).
    dest_seq = work / "unsq-seq"
    shutil.rmtree(dest_seq, ignore_errors=True)
    timed(
        "raw curl + unsquashfs, back to back",
        lambda: (
            subprocess.run(["curl", "-sf", "-o", str(work / "curl.sqsh"), url], check=True),
            subprocess.run(
                [
                    "unsquashfs",
                    "-no-progress",
                    "-processors",
                    str(cpu_count()),
                    "-f",
                    "-d",
                    str(dest_seq),
                    str(work / "curl.sqsh"),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            ),
        ),
    )
    shutil.rmtree(dest_seq, ignore_errors=True)
    (work / "curl.sqsh").unlink()


def _both_at_once(root: Path, scratch: Path, client: Any, archive: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        packing = pool.submit(mksquashfs, root, scratch)
        uploading = pool.submit(client.upload_file, str(archive), "boot-images", "raw/rootfs-at-once")
        packing.result()
        uploading.result()


def customize_once(api: httpx.Client, server: ImsServer, image_id: str, key_id: str, key: KeyPair) -> None:
    # Each raw step above starts after a sync; so does each of the job's phases. Without it the job met the
    # write-back (and, on a file system mounted with `discard`, the discards) of the gigabyte the last raw step
    # had just deleted: its unsquashfs took 5.3 s where the same one after a sync took 1.1-5.1 s. In real use
    # minutes pass between a POST and the previous job, and between the unpack and the user's `complete`.
    subprocess.run(["sync"], check=True)
    start = time.monotonic()
    job = post_customize(api, image_id, key_id, jail=True)
    try:
        job = wait_status(api, job["id"], {"waiting_on_user"}, timeout=1800)
        record("job: POST -> waiting_on_user", time.monotonic() - start)
        start = time.monotonic()
        ssh_ok(api, key, job, "touch /root/bench-was-here && ls /tmp")
        record("job: ssh session (touch a file)", time.monotonic() - start)
        subprocess.run(["sync"], check=True)
        start = time.monotonic()
        ssh_signal(api, key, job, "touch /tmp/complete")
        wait_status(api, job["id"], {"success"}, timeout=1800)
        record("job: touch /tmp/complete -> success", time.monotonic() - start)
        text = logs(api, job["id"])
        print("    job log:", *text.splitlines(), sep="\n    ", flush=True)
        for label, pattern in LOG_FIGURES.items():
            found = re.search(pattern, text)
            if found is None:
                raise RuntimeError(f"no {label!r} in the job log:\n{text}")
            record(label, float(found.group(1)))
    finally:
        api.delete(f"/v3/jobs/{job['id']}")
        wait_gone(api, job["id"], jobs_dir(server) / job["id"], timeout=120)


def summary() -> str:
    by_label: dict[str, list[float]] = {}
    for label, seconds, _ in results:
        by_label.setdefault(label, []).append(seconds)
    lines = ["| step | median s | range s | runs |", "|---|---:|---:|---:|"]
    for label, values in by_label.items():
        lines.append(
            f"| {label} | {statistics.median(values):.2f} | {min(values):.2f}–{max(values):.2f} | {len(values)} |"
        )
    return "\n".join(lines) + "\n\n" + ratios()


def run_ratios() -> list[dict[str, Any]]:
    """Per run: each job figure against the machine's limits measured in the same run (issue 11 item 5)."""
    runs: list[dict[str, float]] = []
    for label, seconds, _ in results:
        if label.startswith("raw unsquashfs"):
            runs.append({})
        if runs:
            runs[-1][label.split(" zstd")[0]] = seconds
    cpus = cpu_count()
    figures: list[dict[str, Any]] = []
    for number, run in enumerate(runs, 1):
        try:
            package_limit = max(run["raw mksquashfs"], run["raw boto3 upload_file"])
            figures.append(
                {
                    "run": number,
                    "load": LOADS[number - 1] if number <= len(LOADS) else "",
                    "waiting": run["job: POST -> waiting_on_user"],
                    "prepare_limit": run["raw curl of a presigned URL"] + run["raw unsquashfs"],
                    "prepare_sequence": run["raw curl + unsquashfs, back to back"],
                    "success": run["job: touch /tmp/complete -> success"],
                    "package_limit": package_limit,
                    # Both tools keep the CPUs busy (SeaweedFS hashes and stores every part): overlapped, they
                    # cannot take less than their CPU seconds spread over every CPU.
                    "cpu_floor": max(
                        package_limit, (run["cpu: raw mksquashfs"] + run["cpu: raw boto3 upload_file"]) / cpus
                    ),
                    "package_at_once": run["raw mksquashfs and boto3 upload_file at once"],
                }
            )
        except KeyError:
            continue
    return figures


def ratios() -> str:
    cpus = cpu_count()
    lines = [
        "| run | load | POST→waiting / (curl + unsquashfs) | POST→waiting / (the two back to back) "
        "| complete→success / max(mksquashfs, boto3 upload) "
        f"| CPU floor of packing + upload on {cpus} CPUs | complete→success / CPU floor "
        "| complete→success / (mksquashfs and upload at once) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in run_ratios():
        waiting, done = run["waiting"], run["success"]
        lines.append(
            f"| {run['run']} | {run['load']} "
            f"| {waiting:.2f} / {run['prepare_limit']:.2f} = **{waiting / run['prepare_limit']:.2f}** "
            f"| {waiting:.2f} / {run['prepare_sequence']:.2f} = **{waiting / run['prepare_sequence']:.2f}** "
            f"| {done:.2f} / {run['package_limit']:.2f} = **{done / run['package_limit']:.2f}** "
            f"| {run['cpu_floor']:.2f} s | **{done / run['cpu_floor']:.2f}** "
            f"| {done:.2f} / {run['package_at_once']:.2f} = **{done / run['package_at_once']:.2f}** |"
        )
    return "\n".join(lines)


LOADS: list[str] = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp"), help="parent of the scratch directory")
    parser.add_argument("--json", type=Path, help="also write each run's figures here (bench/issue11.py reads it)")
    args = parser.parse_args()
    load_before = loadavg()
    print(f"load average before: {load_before}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="ims-bench-job-", dir=args.work))
    work.chmod(0o755)
    weed = SeaweedFS(work / "seaweedfs")
    weed.start()
    if weed.process is not None:
        WEED_PID.append(weed.process.pid)
    server: ImsServer | None = None
    try:
        config = weed.s3_config()
        store = ArtifactStore(config)
        store.ensure_buckets(["ims", "boot-images"])
        root = work / "root"
        timed(f"build {args.size_mb} MB root", lambda: build_root(root, args.size_mb))
        du = subprocess.run(["du", "-sm", str(root)], capture_output=True, text=True).stdout.split()[0]
        files = sum(1 for path in root.rglob("*") if path.is_file())
        archive = work / "image.sqsh"
        mksquashfs(root, archive)
        print(f"root: {du} MB on disk, {files} files; rootfs {archive.stat().st_size / 1e6:.0f} MB", flush=True)
        image = register_in_s3(store, root, archive, name="bench base")
        server = start_ims_server(
            work / "ims",
            {"S3_ENDPOINT": config.endpoint, "S3_ACCESS_KEY": config.access_key, "S3_SECRET_KEY": config.secret_key},
            {"IMS_LOG_LEVEL": "WARNING"},
        )
        key = make_keypair(work / "keys", "bench")
        with httpx.Client(base_url=server.url, timeout=60) as api:
            key_id = add_public_key(api, key)
            image_id = add_image(api, image)
            for run in range(args.runs):
                LOADS.append(loadavg())
                print(f"--- run {run + 1} (load average {LOADS[-1]})", flush=True)
                raw_tools(work, root, archive, store, image.rootfs)
                customize_once(api, server, image_id, key_id, key)
    finally:
        if server is not None:
            server.stop()
        weed.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{os.cpu_count()} CPUs; root {du} MB, {files} files; load average before {load_before}, after {loadavg()}\n"
    )
    print(summary())
    if args.json is not None:
        args.json.write_text(json.dumps(run_ratios(), indent=2))


if __name__ == "__main__":
    main()
