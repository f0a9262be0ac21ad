"""Raw S3 transfer to the embedded SeaweedFS: the ceiling for every image upload and download IMS does.

Usage (repository root, venv active):  python bench/s3_bench.py [--size-mib 1024] [--repeat 2]

Measures boto3's own multipart upload_file/download_file (64 MiB parts, 4 threads: the project's transfer
settings) and, for comparison, ArtifactStore.upload_file, which also hashes the bytes as they go and stores
the md5 as object metadata with a server-side copy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/s3_bench.py` puts bench/ first, not the root
    sys.path.insert(0, str(ROOT))

from tests.support.s3data import random_file  # noqa: E402

from ims.artifacts.s3 import _TRANSFER, ArtifactStore  # noqa: E402
from ims.domain.links import S3Location  # noqa: E402
from ims.embedded.seaweedfs import SeaweedFS  # noqa: E402

BUCKET = "boot-images"


def timed(label: str, size: int, action: object) -> float:
    started = time.monotonic()
    action()  # type: ignore[operator]
    seconds = time.monotonic() - started
    rate = size / seconds / 2**20
    print(f"{label:<40} {seconds:6.1f} s  {rate:7.1f} MiB/s", flush=True)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ims-s3-bench-"))
    seaweed = SeaweedFS(scratch / "seaweedfs")
    seaweed.start()
    try:
        store = ArtifactStore(seaweed.s3_config())
        store.ensure_buckets([BUCKET])
        size = args.size_mib * 2**20
        source = random_file(scratch / "source.bin", size)
        target = scratch / "copy.bin"
        print(f"{args.size_mib} MiB of random bytes; {os.cpu_count()} CPUs; load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        for run in range(args.repeat):
            key = f"bench/{run}/rootfs"
            timed("boto3 upload_file", size,
                  lambda key=key: store.client.upload_file(str(source), BUCKET, key, Config=_TRANSFER))
            timed("boto3 download_file", size,
                  lambda key=key: store.client.download_file(BUCKET, key, str(target), Config=_TRANSFER))
            timed("ArtifactStore.upload_file (md5 + copy)", size,
                  lambda key=key: store.upload_file(source, S3Location(BUCKET, key + ".ims")))
            timed("ArtifactStore.download_file", size,
                  lambda key=key: store.download_file(S3Location(BUCKET, key + ".ims"), target))
            target.unlink()
            for suffix in ("", ".ims"):
                store.delete(S3Location(BUCKET, key + suffix))
    finally:
        seaweed.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
