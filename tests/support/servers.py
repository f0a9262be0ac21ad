"""Servers the tests start themselves: IMS (`ims serve`) and a throw-away PostgreSQL cluster."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy

from ims.embedded.ports import free_port, wait_for_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class ImsServer:
    url: str
    env: dict[str, str]
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self._end_job_processes(wait=0)
            return
        # Jobs outlive a server restart on purpose; a test server takes its jobs with it.
        with contextlib.suppress(httpx.HTTPError):
            httpx.delete(f"{self.url}/v3/jobs", timeout=30)
        self._end_job_processes(wait=20)
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def _job_pids(self) -> list[int]:
        url = self.env.get("IMS_DATABASE_URL") or f"sqlite:///{self.data_dir / 'ims.sqlite3'}"
        try:
            engine = sqlalchemy.create_engine(url)
            with engine.connect() as conn:
                rows = conn.execute(sqlalchemy.text("SELECT runner FROM jobs WHERE runner IS NOT NULL")).all()
            engine.dispose()
        except Exception:
            return []
        pids = []
        for (runner,) in rows:
            handle = json.loads(runner) if isinstance(runner, str) else runner
            if isinstance(handle, dict) and isinstance(handle.get("pid"), int):
                pids.append(handle["pid"])
        return pids

    def _end_job_processes(self, wait: float) -> None:
        """Wait for this server's job processes to end; kill (by PID) those still there."""
        pids = [pid for pid in self._job_pids() if _is_job_process(pid)]
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = [pid for pid in pids if _is_job_process(pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _is_job_process(pid: int) -> bool:
    try:
        return b"ims.jobs.nsinit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def start_ims_server(
    data_dir: Path,
    s3_env: dict[str, str],
    extra_env: dict[str, str] | None = None,
    args: list[str] | None = None,
    port: int | None = None,
) -> ImsServer:
    """Start `ims serve` and wait until it is ready. A free port may be taken by another process before the
    server binds it; that start is retried on a fresh port (unless the caller chose the port)."""
    for attempt in range(3):
        server = _start_once(data_dir, s3_env, extra_env, args, port or free_port())
        if server is not None:
            return server
        if port is not None or attempt == 2:
            break
    raise RuntimeError(f"ims serve could not bind a port:\n{(data_dir / 'server.log').read_text(errors='replace')}")


def _start_once(
    data_dir: Path, s3_env: dict[str, str], extra_env: dict[str, str] | None, args: list[str] | None, port: int
) -> ImsServer | None:
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(s3_env)
    env.update({"IMS_DATA_DIR": str(data_dir), "IMS_LOG_LEVEL": "INFO"})
    env.update(extra_env or {})
    log_path = data_dir / "server.log"
    log_start = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ims", "serve", "--host", "127.0.0.1", "--port", str(port), *(args or [])],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = ImsServer(f"http://127.0.0.1:{port}", env, data_dir, process, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = server.log()[log_start:]
            if "address already in use" in output:
                return None
            raise RuntimeError(f"ims serve exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{server.url}/healthz/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"ims serve did not become ready:\n{server.log()}")


@dataclass
class PostgresCluster:
    base: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def _as_postgres(self, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        if os.geteuid() == 0:
            argv = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]
        return subprocess.run(argv, check=True, capture_output=True, cwd="/")

    @classmethod
    def start(cls, base: Path, *, durable: bool = False) -> PostgresCluster:
        """`durable` keeps fsync on (benchmarks); tests run without it for speed."""
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError("PostgreSQL 15 server binaries are not installed")
        base.mkdir(parents=True, exist_ok=True)
        cluster = cls(base, free_port())
        if os.geteuid() == 0:
            shutil.chown(base, "postgres", "postgres")
        cluster._as_postgres([str(PG_BIN / "initdb"), "-D", str(base / "data"), "-A", "trust", "-U", "postgres"])
        options = f"-c listen_addresses=127.0.0.1 -p {cluster.port} -k {base} -c fsync={'on' if durable else 'off'} -c max_connections=200"
        cluster._as_postgres(
            [str(PG_BIN / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "log"), "-o", options, "-w", "start"]
        )
        if not wait_for_port("127.0.0.1", cluster.port, 30):
            raise RuntimeError("PostgreSQL did not start")
        return cluster

    def stop(self) -> None:
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.base / "data"), "-m", "fast", "-w", "stop"])
