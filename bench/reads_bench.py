"""Issue 11 benchmark: list, get, jobs list, conditional requests and writes of `ims serve` as it runs by
default, against the original's figures and against the machine's limits measured in the same run.

Usage (from the repository root; needs `wrk` from apt):

    .venv/bin/python bench/reads_bench.py                 # 10,000 images, 10 jobs, 10 s per phase
    .venv/bin/python bench/reads_bench.py --duration 5 --json results.json
    .venv/bin/python bench/reads_bench.py --duration 5 --postgres --reads-only   # a throw-away PostgreSQL cluster
    .venv/bin/python bench/reads_bench.py --database-url postgresql+psycopg://user@host/db  # an empty database

On PostgreSQL the write phases' limit is still the raw SQLite commit (the figure the goals are stated against).

Machine limits, measured in the same run on the same CPUs and disk, each right before the phase it is the
limit of (so both meet about the same load from the rest of the machine):
- reads: `wrk` against a bare ASGI app (bench/hello_app.py) under the same uvicorn (uvloop + httptools) with
  the same number of processes as `ims serve`, answering fixed bytes: a small JSON body for get and the jobs
  list, the 10,000-image list body itself for the list;
- writes: a bare SQLite loop of BEGIN IMMEDIATE, one INSERT of an image-shaped row, COMMIT on one connection,
  WAL with `synchronous=FULL` (the server's setting), in the same directory as the server's database.

The load comes from `wrk` (C, one thread) on the same 2 CPUs; /proc/loadavg is printed with every phase.
The original's figures (issue 11: gunicorn with one sync worker, JSON files, the quietest of three runs at
load 0.9-2.9) are constants below: it cannot run on this machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "bench"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from api_bench import DONE, _lua_ids, seed  # noqa: E402
from tests.support.servers import ImsServer, PostgresCluster, start_ims_server  # noqa: E402

from ims.artifacts.s3 import ArtifactStore  # noqa: E402
from ims.cli.serve import default_workers  # noqa: E402
from ims.domain.timeutil import format_timestamp, utcnow  # noqa: E402
from ims.embedded.ports import free_port, wait_for_port  # noqa: E402
from ims.embedded.seaweedfs import SeaweedFS  # noqa: E402
from ims.settings import Settings  # noqa: E402
from ims.store import repository  # noqa: E402
from ims.store.db import Database  # noqa: E402

# The original as shipped, issue 11: (req/s, p99 ms).
ORIGINAL = {
    "list": (4.8, 2600.0),
    "get": (1480.0, 8.3),
    "jobs": (782.0, 18.5),
    "create": (5.5, None),
    "patch": (5.5, None),
    "delete": (5.5, None),
}
GOALS = {
    "list": "≥10× req/s, p99 ≤0.1×",
    "get": "≥1.5× req/s, p99 ≤1×",
    "jobs": "≥1.5× req/s, p99 ≤1×",
    "create": "≥30×, ≥0.5× raw commit",
    "patch": "≥30×, ≥0.5× raw commit",
    "delete": "≥30×, ≥0.5× raw commit",
}


@dataclass
class Phase:
    name: str
    target: str  # ims, limit
    connections: int
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    load: str = ""
    limit: Phase | None = None  # the machine's limit, measured right before this phase


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wrk(url: str, script: str, connections: int, duration: float, scratch: Path, name: str) -> Phase:
    path = scratch / f"{name}-{connections}.lua"
    path.write_text(script + DONE)
    phase = Phase(name, "", connections, load=loadavg())
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "30s", "-s", str(path), url]
    output = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    rate, summary = re.search(r"Requests/sec:\s+([\d.]+)", output), re.search(r"BENCH (.*)", output)
    if rate is None or summary is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    figures = dict(pair.split("=", 1) for pair in summary.group(1).split())
    phase.rps, phase.requests = float(rate.group(1)), int(figures["requests"])
    phase.p50_ms, phase.p99_ms = float(figures["p50"]), float(figures["p99"])
    phase.errors = int(figures["non2xx"]) + int(figures["errors"])
    return phase


def get_script(path: str, headers: dict[str, str] | None = None) -> str:
    lines = [f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items()]
    return "\n".join(lines) + f'\nrequest = function() return wrk.format("GET", "{path}") end\n'


def raw_commit_rate(directory: Path, duration: float) -> Phase:
    """BEGIN IMMEDIATE, INSERT an image-shaped row, COMMIT: WAL, synchronous=FULL, as the server runs SQLite."""
    phase = Phase("raw SQLite commit", "limit", 1, load=loadavg())
    path = directory / "raw-commit.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE images (id TEXT PRIMARY KEY, created TEXT NOT NULL, deleted TEXT, data TEXT)")
    body = json.dumps({"name": "bench", "link": None, "arch": "x86_64", "metadata": {"a": "b"}})
    latencies: list[float] = []
    started = time.monotonic()
    while time.monotonic() - started < duration:
        begin = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO images VALUES (?, ?, NULL, ?)", (str(uuid.uuid4()), "2026-01-01T00:00:00", body))
        conn.execute("COMMIT")
        latencies.append(time.perf_counter() - begin)
    elapsed = time.monotonic() - started
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    latencies.sort()
    phase.requests, phase.rps = len(latencies), len(latencies) / elapsed
    phase.p50_ms = latencies[len(latencies) // 2] * 1000
    phase.p99_ms = latencies[int(len(latencies) * 0.99)] * 1000
    return phase


def refill(server: ImsServer, image_id: str, rounds: int = 9) -> Phase:
    """The list right after a write, when the cache must be filled again: a PATCH, then one GET, timed."""
    phase = Phase("list right after a write", "", 1, load=loadavg())
    latencies = []
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for n in range(rounds):
            client.patch(f"/v3/images/{image_id}", json={"name": f"refill-{n}"}).raise_for_status()
            started = time.perf_counter()
            client.get("/v3/images").raise_for_status()
            latencies.append(time.perf_counter() - started)
    latencies.sort()
    phase.requests, phase.p50_ms, phase.p99_ms = rounds, latencies[rounds // 2] * 1000, latencies[-1] * 1000
    phase.rps = 1 / latencies[rounds // 2]
    return phase


def job_record(image_id: str, key_id: str, status: str) -> dict[str, object]:
    """A customize job shaped as POST /v3/jobs makes it (stored `done`: no worker launches it)."""
    job_id = str(uuid.uuid4())
    return {
        "created": format_timestamp(utcnow()),
        "job_type": "customize",
        "artifact_id": image_id,
        "build_env_size": 15,
        "id": job_id,
        "enable_debug": False,
        "public_key_id": key_id,
        "kubernetes_job": f"cray-ims-{job_id}-customize",
        "kubernetes_service": f"cray-ims-{job_id}-service",
        "kubernetes_configmap": f"cray-ims-{job_id}-configmap",
        "ssh_containers": [
            {
                "name": "customize",
                "jail": False,
                "status": "pending",
                "connection_info": {
                    "customer_access": {"host": "127.0.0.1", "port": 40000},
                    "cluster.local": {"host": "127.0.0.1", "port": 40000},
                },
            }
        ],
        "status": status,
        "image_root_archive_name": "bench",
        "initrd_file_name": "initrd",
        "kernel_file_name": "vmlinuz",
        "resultant_image_id": None,
        "kubernetes_namespace": "ims",
        "kernel_parameters_file_name": "kernel-parameters",
        "arch": "x86_64",
        "require_dkms": True,
        "kubernetes_pvc": f"cray-ims-{job_id}-job-claim",
        "job_mem_size": 8,
        "remote_build_node": "",
        "kubernetes_secret": f"cray-ims-{job_id}-secret",
        "status_reason": None,
    }


def open_database(server: ImsServer) -> Database:
    settings = Settings(
        IMS_DATA_DIR=server.env["IMS_DATA_DIR"],  # type: ignore[call-arg]
        IMS_DATABASE_URL=server.env.get("IMS_DATABASE_URL", ""),
    )
    return Database(settings.effective_database_url)


# A well-formed ed25519 public key: the key type and 32 bytes, each with its length.
_ED25519 = base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + bytes(range(32))).decode()


def seed_jobs(server: ImsServer, image_id: str, count: int) -> None:
    key = httpx.post(
        f"{server.url}/v3/public-keys",
        timeout=30,
        json={"name": "bench", "public_key": f"ssh-ed25519 {_ED25519} bench"},
    )
    key.raise_for_status()
    database = open_database(server)
    try:
        with database.write() as conn:
            for n in range(count):
                repository.jobs.insert(conn, job_record(image_id, key.json()["id"], "success" if n % 2 else "error"))
    finally:
        database.dispose()


def seed_images(server: ImsServer, count: int, prefix: str) -> list[str]:
    """More images in one transaction (the soft-delete phase deletes them one by one)."""
    template = {"name": "", "link": None, "arch": "x86_64", "metadata": {"a": "b"}}
    records = [
        {**template, "id": str(uuid.uuid4()), "created": format_timestamp(utcnow()), "name": f"{prefix}-{n}"}
        for n in range(count)
    ]
    database = open_database(server)
    try:
        with database.write() as conn:
            for record in records:
                repository.images.insert(conn, record)
    finally:
        database.dispose()
    return [str(record["id"]) for record in records]


WRITE_SCRIPTS = {
    "create": (
        'local n = 0\nwrk.headers["Content-Type"] = "application/json"\n'
        "request = function()\n  n = n + 1\n"
        '  return wrk.format("POST", "/v3/images", nil, \'{"name":"bench-\' .. n .. \'","metadata":{"a":"b"}}\')\nend\n'
    ),
    "patch": (
        'local n = 0\nwrk.headers["Content-Type"] = "application/json"\n'
        "request = function()\n  n = n + 1\n"
        '  local body = \'{"metadata":{"operation":"set","key":"k\' .. (n % 20) .. \'","value":"v\' .. n .. \'"}}\'\n'
        '  return wrk.format("PATCH", "/v3/images/" .. ids[math.random(#ids)], nil, body)\nend\n'
    ),
    # One wrk thread walks the list once: every DELETE hits an image still there.
    "delete": "local n = 0\nrequest = function()\n  n = n + 1\n"
    '  return wrk.format("DELETE", "/v3/images/" .. ids[n])\nend\n',
}


class HelloServer:
    def __init__(self, workers: int, static_body: Path, log: Path) -> None:
        self.port = free_port()
        env = dict(os.environ, BENCH_STATIC_BODY=str(static_body))
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "hello_app:app",
                    "--app-dir",
                    str(ROOT / "bench"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(workers),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if not wait_for_port("127.0.0.1", self.port, 30):
            self.stop()
            raise RuntimeError(f"hello server did not start:\n{log.read_text()}")
        time.sleep(1.0)  # every worker process up

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        import signal

        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(20)


def ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}×" if reference else "–"


def table(phases: list[Phase]) -> str:
    lines = [
        "| scenario | conns | req/s | p50 ms | p99 ms | errors | load | original req/s, p99 | × original req/s |"
        " p99 / original p99 | machine limit req/s, p99 | / limit req/s | goal |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for p in (phase for phase in phases if phase.target == "ims"):
        key = p.name.split()[0]
        original = ORIGINAL.get(key) if p.target == "ims" else None
        limit = p.limit
        orig_text = (
            "–" if original is None else (f"{original[0]:g}, {original[1]:g} ms" if original[1] else f"{original[0]:g}")
        )
        p99_ratio = f"{p.p99_ms / original[1]:.3f}" if original and original[1] else "–"
        lines.append(
            f"| {p.name} | {p.connections} | {p.rps:,.1f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | {p.errors} | {p.load} | "
            f"{orig_text} | {ratio(p.rps, original[0] if original else None)} | {p99_ratio} | "
            f"{f'{limit.rps:,.0f}, {limit.p99_ms:.1f} ms' if limit else '–'} | {ratio(p.rps, limit.rps if limit else None)} | "
            f"{GOALS.get(key, '') if p.target == 'ims' else 'machine limit'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--list-connections", type=int, default=4)
    parser.add_argument("--read-connections", default="4,32", help="connections for get and the jobs list")
    parser.add_argument("--write-connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="ims serve --workers (default: as ims serve does)")
    parser.add_argument("--json", type=Path, help="also write the phases here")
    parser.add_argument("--writes-only", action="store_true", help="skip the read phases")
    parser.add_argument("--reads-only", action="store_true", help="skip the write phases")
    database = parser.add_mutually_exclusive_group()
    database.add_argument("--database-url", default="", help="IMS_DATABASE_URL of an empty database (default: SQLite)")
    database.add_argument(
        "--postgres", action="store_true", help="on a throw-away PostgreSQL cluster (fsync on, as SQLite runs)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("reads_bench: `wrk` is missing (apt-get install wrk)")
    workers = args.workers or default_workers()
    read_connections = [int(c) for c in args.read_connections.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="ims-reads-bench-", dir=os.environ.get("IMS_BENCH_DIR") or None))
    scratch.chmod(0o711)  # the postgres user must reach its cluster directory
    print(
        f"{os.cpu_count()} CPUs, load {loadavg()} at start; ims serve with {workers} processes "
        f"({'default' if not args.workers else '--workers'}); {args.duration:g} s per phase",
        flush=True,
    )
    seaweed = SeaweedFS(scratch / "seaweedfs")
    seaweed.start()
    server: ImsServer | None = None
    hello: HelloServer | None = None
    postgres: PostgresCluster | None = None
    backend = "PostgreSQL" if args.postgres or args.database_url else "SQLite"
    phases: list[Phase] = []

    def record(phase: Phase, target: str) -> Phase:
        phase.target = target
        phases.append(phase)
        print(
            f"  {target:5} {phase.name:24} c={phase.connections:<3} {phase.rps:10,.1f} req/s  p50 "
            f"{phase.p50_ms:8.2f} ms  p99 {phase.p99_ms:8.2f} ms  errors {phase.errors}  load {phase.load}",
            flush=True,
        )
        return phase

    try:
        config = seaweed.s3_config()
        ArtifactStore(config).ensure_buckets(["ims", "boot-images"])
        s3_env = {
            "S3_ENDPOINT": config.endpoint,
            "S3_ACCESS_KEY": config.access_key,
            "S3_SECRET_KEY": config.secret_key,
        }
        server_args = ["--workers", str(args.workers)] if args.workers else []
        server_env = {"IMS_LOG_LEVEL": "WARNING"}
        if args.postgres:
            postgres = PostgresCluster.start(scratch / "postgres", durable=True)
            server_env["IMS_DATABASE_URL"] = postgres.create_database("reads_bench")
        elif args.database_url:
            server_env["IMS_DATABASE_URL"] = args.database_url
        print(f"database: {backend}", flush=True)
        server = start_ims_server(scratch / "ims", s3_env, server_env, args=server_args)
        ids = seed(server, args.images)
        seed_jobs(server, ids[0], args.jobs)
        listed = httpx.get(f"{server.url}/v3/images", timeout=120)
        jobs = httpx.get(f"{server.url}/v3/jobs", timeout=30)
        assert len(listed.json()) == args.images and len(jobs.json()) == args.jobs
        body = scratch / "list.json"
        body.write_bytes(listed.content)
        print(f"seeded {len(ids)} images ({len(listed.content) / 1e6:.2f} MB listed) and {args.jobs} jobs", flush=True)
        hello = HelloServer(workers, body, scratch / "hello.log")

        ids_lua = _lua_ids(ids) + "math.randomseed(os.time())\n"
        get_one = (
            ids_lua + 'request = function() return wrk.format("GET", "/v3/images/" .. ids[math.random(#ids)]) end\n'
        )
        list_tag, jobs_tag = (response.headers["etag"].replace('"', '\\"') for response in (listed, jobs))
        static, small = get_script("/list"), get_script("/hello")
        # (name, connections, ims script, limit script): each phase right after its limit, so both meet the same
        # load from the rest of the machine.
        reads = [
            ("list 10,000 images", args.list_connections, get_script("/v3/images"), static),
            (
                "list If-None-Match (304)",
                args.list_connections,
                get_script("/v3/images", {"If-None-Match": list_tag}),
                static,
            ),
            *(("get one image", c, get_one, small) for c in read_connections),
            *(("jobs list (10)", c, get_script("/v3/jobs"), small) for c in read_connections),
            (
                "jobs If-None-Match (304)",
                read_connections[0],
                get_script("/v3/jobs", {"If-None-Match": jobs_tag}),
                small,
            ),
        ]
        for name, connections, script, limit_script in [] if args.writes_only else reads:
            limit_name = "list (static bytes)" if limit_script is static else "hello (small JSON)"
            limit = record(wrk(hello.url, limit_script, connections, args.duration, scratch, limit_name), "limit")
            wrk(server.url, script, connections, 2, scratch, "warm-up")  # every server process has its entries
            record(wrk(server.url, script, connections, args.duration, scratch, name), "ims").limit = limit
        hello.stop()
        hello = None
        if not args.writes_only:
            record(refill(server, ids[1]), "ims")

        # More than the deletes of the phase can reach: a DELETE beyond the list would end wrk with an error.
        doomed = [] if args.reads_only else seed_images(server, int(max(2000.0, 20000 * args.duration)), "doomed")
        writes = [
            ("create image", WRITE_SCRIPTS["create"]),
            ("patch image", ids_lua + WRITE_SCRIPTS["patch"]),
            ("delete image (soft)", _lua_ids(doomed) + WRITE_SCRIPTS["delete"]),
        ]
        for name, script in [] if args.reads_only else writes:
            limit = record(raw_commit_rate(scratch / "ims", args.duration), "limit")
            record(wrk(server.url, script, args.write_connections, args.duration, scratch, name), "ims").limit = limit
    finally:
        if hello is not None:
            hello.stop()
        if server is not None:
            server.stop()
        seaweed.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    print(
        f"\n{os.cpu_count()} CPUs; load {loadavg()} at the end; ims serve with {workers} processes; "
        f"{args.images} images, {args.jobs} jobs; wrk -t1; {args.duration:g} s per phase; {backend}\n"
    )
    print(table(phases))
    if args.json:
        args.json.write_text(json.dumps([asdict(p) for p in phases], indent=2))
    return 1 if any(p.errors for p in phases if "304" not in p.name) else 0


if __name__ == "__main__":
    raise SystemExit(main())
