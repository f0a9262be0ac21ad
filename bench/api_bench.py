"""API benchmark: requests per second and p50/p99 latency of list, get, patch and create on `ims serve`.

Usage (from the repository root, venv active; needs `wrk` from apt and, for PostgreSQL, the PostgreSQL 15 server):

    python bench/api_bench.py                          # SQLite and PostgreSQL, 10,000 images, 15 s per phase
    python bench/api_bench.py --backends sqlite --duration 5 --workers 2 --json results.json

Each backend gets its own `ims serve` subprocess (as it runs by default: one process, SQLite in its data
directory or PostgreSQL by IMS_DATABASE_URL) on a private SeaweedFS. The load comes from `wrk` (C, LuaJIT), so
the client costs the 2-core machine little CPU; its Lua scripts pick random image ids.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/api_bench.py` puts bench/ first, not the root
    sys.path.insert(0, str(ROOT))

from tests.support.servers import ImsServer, PostgresCluster, start_ims_server  # noqa: E402

from ims.artifacts.s3 import ArtifactStore  # noqa: E402
from ims.domain.timeutil import format_timestamp, utcnow  # noqa: E402
from ims.embedded.seaweedfs import SeaweedFS  # noqa: E402
from ims.settings import Settings  # noqa: E402
from ims.store import repository  # noqa: E402
from ims.store.db import Database  # noqa: E402


@dataclass
class Result:
    backend: str
    operation: str
    connections: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _lua_ids(ids: list[str]) -> str:
    return "local ids = {" + ",".join(f'"{i}"' for i in ids) + "}\n"


SCRIPTS = {
    "list": 'request = function() return wrk.format("GET", "/v3/images") end\n',
    "get": 'request = function() return wrk.format("GET", "/v3/images/" .. ids[math.random(#ids)]) end\n',
    "patch": (
        'local n = 0\nwrk.headers["Content-Type"] = "application/json"\n'
        "request = function()\n  n = n + 1\n"
        '  local body = \'{"metadata":{"operation":"set","key":"k\' .. (n % 20) .. \'","value":"v\' .. n .. \'"}}\'\n'
        '  return wrk.format("PATCH", "/v3/images/" .. ids[math.random(#ids)], nil, body)\nend\n'
    ),
    "create": (
        'local n = 0\nwrk.headers["Content-Type"] = "application/json"\n'
        "request = function()\n  n = n + 1\n"
        '  return wrk.format("POST", "/v3/images", nil, \'{"name":"bench-\' .. n .. \'","metadata":{"a":"b"}}\')\nend\n'
    ),
}
# wrk prints the latency distribution only from done(); this prints exact figures in milliseconds.
DONE = (
    "done = function(summary, latency, requests)\n"
    '  io.write(string.format("BENCH requests=%d non2xx=%d errors=%d p50=%.3f p99=%.3f\\n", summary.requests,\n'
    "    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write +\n"
    "    summary.errors.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))\nend\n"
)


def run_wrk(url: str, operation: str, ids: list[str], connections: int, duration: float, scratch: Path) -> Result:
    script = scratch / f"{operation}.lua"
    script.write_text(_lua_ids(ids) + "math.randomseed(os.time())\n" + SCRIPTS[operation] + DONE)
    threads = min(2, connections)
    seconds = max(1, round(duration))
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script), url]
    output = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    summary = re.search(r"BENCH (.*)", output)
    if rate is None or summary is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    rps = float(rate.group(1))
    figures = dict(pair.split("=", 1) for pair in summary.group(1).split())
    return Result("", operation, connections, int(figures["requests"]), rps, float(figures["p50"]),
                  float(figures["p99"]), int(figures["non2xx"]) + int(figures["errors"]))


def seed(server: ImsServer, count: int) -> list[str]:
    """Store `count` images shaped exactly as POST /v3/images makes them, in one transaction.

    Through the API this would take minutes of fsyncs; the create phase measures that path instead."""
    sample = httpx.post(f"{server.url}/v3/images", json={"name": "seed-0", "metadata": {"n": "0"}}, timeout=60)
    sample.raise_for_status()
    template = sample.json()
    settings = Settings(IMS_DATA_DIR=server.env["IMS_DATA_DIR"],  # type: ignore[call-arg]
                        IMS_DATABASE_URL=server.env.get("IMS_DATABASE_URL", ""))
    database = Database(settings.effective_database_url)
    records = [{**template, "id": str(uuid.uuid4()), "created": format_timestamp(utcnow()),
                "name": f"seed-{n}", "metadata": {"n": str(n)}} for n in range(1, count)]
    try:
        with database.write() as conn:
            for record in records:
                repository.images.insert(conn, record)
    finally:
        database.dispose()
    return [template["id"]] + [record["id"] for record in records]


def bench_backend(backend: str, args: argparse.Namespace, s3_env: dict[str, str], scratch: Path,
                  postgres: PostgresCluster | None) -> list[Result]:
    extra = {"IMS_LOG_LEVEL": "WARNING"}
    if postgres is not None:
        extra["IMS_DATABASE_URL"] = postgres.create_database(f"bench_{int(time.time())}")
    server_args = ["--workers", str(args.workers)] if args.workers > 1 else []
    server: ImsServer = start_ims_server(scratch / f"ims-{backend}", s3_env, extra, args=server_args)
    try:
        started = time.monotonic()
        ids = seed(server, args.images)
        print(f"[{backend}] stored {len(ids)} images in {time.monotonic() - started:.1f} s", flush=True)
        one_list = httpx.get(f"{server.url}/v3/images", timeout=120)
        print(f"[{backend}] one list of {len(one_list.json())} images: {one_list.elapsed.total_seconds() * 1000:.0f} ms,"
              f" {len(one_list.content) / 1e6:.1f} MB", flush=True)
        results = []
        for operation, connections in (("list", args.list_connections), ("get", args.connections),
                                       ("patch", args.connections), ("create", args.connections)):
            result = run_wrk(server.url, operation, ids, connections, args.duration, scratch)
            result.backend = backend
            print(f"[{backend}] {operation}: {result.rps:.1f} req/s, p50 {result.p50_ms:.1f} ms, "
                  f"p99 {result.p99_ms:.1f} ms, errors {result.errors}", flush=True)
            results.append(result)
        return results
    finally:
        server.stop()


def table(results: list[Result]) -> str:
    lines = ["| backend | operation | connections | requests | req/s | p50 ms | p99 ms | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.backend} | {r.operation} | {r.connections} | {r.requests} | {r.rps:.1f} | "
                     f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--images", type=int, default=10_000, help="images listed by the list phase")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--connections", type=int, default=32, help="connections for get, patch and create")
    parser.add_argument("--list-connections", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="ims serve --workers")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("api_bench: `wrk` is missing (apt-get install wrk)")

    scratch = Path(tempfile.mkdtemp(prefix="ims-bench-"))
    scratch.chmod(0o711)  # the postgres user must reach its cluster directory
    seaweed = SeaweedFS(scratch / "seaweedfs")
    seaweed.start()
    postgres: PostgresCluster | None = None
    results: list[Result] = []
    try:
        ArtifactStore(seaweed.s3_config()).ensure_buckets(["ims", "boot-images"])
        config = seaweed.s3_config()
        s3_env = {"S3_ENDPOINT": config.endpoint, "S3_ACCESS_KEY": config.access_key,
                  "S3_SECRET_KEY": config.secret_key}
        for backend in args.backends.split(","):
            if backend == "postgresql" and postgres is None:
                postgres = PostgresCluster.start(scratch / "postgres", durable=True)  # fsync on, as SQLite
            results += bench_backend(backend, args, s3_env, scratch, postgres if backend == "postgresql" else None)
    finally:
        if postgres is not None:
            postgres.stop()
        seaweed.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    load = os.getloadavg()
    print(f"\n{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
          f"{args.images} images; {args.duration:g} s per phase; ims serve --workers {args.workers}\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
