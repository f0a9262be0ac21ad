"""Customize stages on a ~1 GB root: raw tools and raw S3 against our stage functions.

Run as root: `python bench/customize_stages.py [--size-mb 1024] [--work DIR]`. Starts its own SeaweedFS
(and `ims serve` for the full upload) on free ports and stops them by PID.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.images import build_image_root  # noqa: E402
from tests.support.servers import start_ims_server  # noqa: E402

from ims.artifacts.s3 import ArtifactStore, make_client  # noqa: E402
from ims.client.artifacts import image_metadata, upload_artifact_set, upload_image_artifacts  # noqa: E402
from ims.client.http import ImsClient  # noqa: E402
from ims.domain.links import S3Location  # noqa: E402
from ims.embedded.seaweedfs import SeaweedFS  # noqa: E402
from ims.stages.environment import JobEnvironment  # noqa: E402
from ims.stages.package import squash  # noqa: E402
from ims.stages.prepare import prepare  # noqa: E402
from ims.stages.reporting import Reporter  # noqa: E402

WORDS = [
    "kernel",
    "initrd",
    "squashfs",
    "image",
    "root",
    "node",
    "boot",
    "customize",
    "package",
    "upload",
    "manifest",
    "artifact",
]
results: list[tuple[str, float, str]] = []


def timed(label: str, action: Callable[[], Any], note: str = "") -> Any:
    subprocess.run(["sync"], check=True)
    start = time.monotonic()
    value = action()
    seconds = time.monotonic() - start
    results.append((label, seconds, note))
    print(f"{label:58s} {seconds:8.2f} s  {note}", flush=True)
    return value


def build_root(root: Path, size_mb: int) -> None:
    """Half incompressible (a few large random files), half text in many small files."""
    build_image_root(root, marker="bench")
    rng = random.Random(7)
    data = root / "usr" / "share" / "bench"
    data.mkdir(parents=True, exist_ok=True)
    half = size_mb * 1024 * 1024 // 2
    written = 0
    index = 0
    while written < half:
        size = min(16 * 1024 * 1024, half - written)
        (data / f"blob-{index:04d}.bin").write_bytes(os.urandom(size))
        written += size
        index += 1
    written = 0
    index = 0
    while written < half:
        directory = data / f"text-{index // 200:03d}"
        directory.mkdir(exist_ok=True)
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2000, 12000))) + "\n"
        (directory / f"file-{index:05d}.txt").write_text(text)
        written += len(text)
        index += 1


def md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument(
        "--skip-slow", action="store_true", help="leave out zstd level 15 and gzip (minutes each on 2 CPUs)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ims-bench-", dir=args.work))
    weed = SeaweedFS(work / "seaweedfs")
    weed.start()
    config = weed.s3_config()
    store = ArtifactStore(config)
    store.ensure_buckets(["ims", "boot-images"])
    server = None
    try:
        root = work / "root"
        timed(f"build {args.size_mb} MB root", lambda: build_root(root, args.size_mb))
        du = subprocess.run(["du", "-sm", str(root)], capture_output=True, text=True).stdout.split()[0]
        print(f"root: {du} MB on disk, {sum(1 for _ in root.rglob('*'))} entries")
        cpus = str(len(os.sched_getaffinity(0)))

        archives: dict[str, Path] = {}
        variants: list[tuple[str, list[str]]] = [("zstd -Xcompression-level 3", ["-Xcompression-level", "3"])]
        if not args.skip_slow:
            variants += [("zstd (level 15)", []), ("gzip (original's default)", ["-comp", "gzip"])]
        for label, extra in variants:
            out = work / f"raw-{len(archives)}.sqsh"
            comp = [] if "-comp" in extra else ["-comp", "zstd"]
            argv = [
                "mksquashfs",
                str(root),
                str(out),
                "-noappend",
                "-no-progress",
                "-quiet",
                "-processors",
                cpus,
                *comp,
                *extra,
            ]
            timed(f"raw mksquashfs {label}", lambda argv=argv: subprocess.run(argv, check=True))
            archives[label] = out
            print(f"    size {out.stat().st_size / 1e6:.1f} MB")
        sqsh = archives["zstd -Xcompression-level 3"]  # what the package stage writes by default

        for label, archive in archives.items():
            dest = work / "unsq"
            shutil.rmtree(dest, ignore_errors=True)
            timed(
                f"raw unsquashfs {label}",
                lambda archive=archive, dest=dest: subprocess.run(
                    ["unsquashfs", "-no-progress", "-f", "-d", str(dest), str(archive)],
                    check=True,
                    stdout=subprocess.DEVNULL,
                ),
            )
        shutil.rmtree(work / "unsq", ignore_errors=True)

        raw = make_client(config)
        size_mb = sqsh.stat().st_size / 1e6
        timed("md5 of the archive (one local read)", lambda: md5_file(sqsh), f"{size_mb:.0f} MB")
        timed("raw boto3 upload_file (no md5)", lambda: raw.upload_file(str(sqsh), "boot-images", "raw/rootfs"))
        location = S3Location("boot-images", "ours/rootfs")
        timed("ArtifactStore.upload_file (md5 streamed + metadata copy)", lambda: store.upload_file(sqsh, location))
        timed(
            "server-side metadata copy alone",
            lambda: raw.copy_object(
                Bucket="boot-images",
                Key="ours/rootfs",
                CopySource={"Bucket": "boot-images", "Key": "ours/rootfs"},
                Metadata={"md5sum": "x"},
                MetadataDirective="REPLACE",
            ),
        )
        boot = root / "boot"
        image_id = str(uuid.uuid4())
        files = {
            "rootfs": sqsh,
            "kernel": boot / "vmlinuz-6.1.0-ims-test",
            "initrd": boot / "initrd",
            "boot_parameters": boot / "kernel-parameters",
        }
        timed(
            "upload_artifact_set (4 artifacts + manifest)",
            lambda: upload_artifact_set(
                store,
                bucket="boot-images",
                image_id=image_id,
                files=files,
                metadata=image_metadata("bench", image_id, None),
            ),
        )

        url = store.presign_get(S3Location("boot-images", f"{image_id}/rootfs"), 600)
        timed(
            "raw download (curl) of the rootfs",
            lambda: subprocess.run(["curl", "-sf", "-o", str(work / "curl.sqsh"), url], check=True),
        )
        job = work / "job"
        env = JobEnvironment.from_env(
            {
                "IMS_JOB_ID": str(uuid.uuid4()),
                "IMAGE_ROOT_PARENT": str(job),
                "DOWNLOAD_URL": url,
                "DOWNLOAD_MD5SUM": md5_file(sqsh),
                "IMAGE_ROOT_ARCHIVE_NAME": "bench customized",
                "S3_ENDPOINT": config.endpoint,
                "S3_ACCESS_KEY": config.access_key,
                "S3_SECRET_KEY": config.secret_key,
            }
        )
        reporter = Reporter(env.job_id, None, out=open(os.devnull, "w"))  # noqa: SIM115
        timed("stage prepare (download + md5 + unsquashfs)", lambda: prepare(env, reporter))
        archive = timed(
            "stage squash (mksquashfs zstd level 3, our default)", lambda: squash(env, reporter, env.image_root)
        )
        server = start_ims_server(
            work / "ims",
            {"S3_ENDPOINT": config.endpoint, "S3_ACCESS_KEY": config.access_key, "S3_SECRET_KEY": config.secret_key},
        )
        with ImsClient(server.url) as client:
            timed(
                "upload_image_artifacts (POST, upload, manifest, PATCH)",
                lambda: upload_image_artifacts(
                    client,
                    store,
                    name="bench customized",
                    arch="x86_64",
                    job_id=None,
                    rootfs=archive,
                    kernel=boot / "vmlinuz-6.1.0-ims-test",
                    initrd=boot / "initrd",
                    kernel_parameters=boot / "kernel-parameters",
                ),
            )
    finally:
        if server is not None:
            server.stop()
        weed.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\nsummary")
    for label, seconds, note in results:
        print(f"  {label:58s} {seconds:8.2f} s  {note}")


if __name__ == "__main__":
    main()
