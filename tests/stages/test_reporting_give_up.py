"""Issue 10: a job's stages give up on an unreachable IMS within a bounded time, and SIGTERM ends a job
within seconds whatever it is doing (even retrying a status report to a dead or hung server)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from ims.client.http import ImsClient
from ims.embedded.ports import free_port
from ims.stages.reporting import ImsGone, Reporter, run_stage

JOB_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


@pytest.fixture
def hung_server() -> Iterator[str]:
    """Accepts connections (the kernel's backlog) and never answers: an IMS that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused


@pytest.mark.parametrize("kind", ["dead", "hung"])
def test_a_status_report_gives_up_within_the_bound(kind: str, hung_server: str) -> None:
    url = dead_url() if kind == "dead" else hung_server
    with ImsClient(url, give_up_seconds=3, timeout=30) as client:
        reporter = Reporter(JOB_ID, client)
        start = time.monotonic()
        with pytest.raises(ImsGone):
            reporter.status("building_image")
        took = time.monotonic() - start
        assert took < 6, took
        # The stage ends with an error code, and its last report does not wait again.
        start = time.monotonic()
        assert run_stage("build", reporter, lambda: reporter.status("packaging_artifacts")) == 1
        assert time.monotonic() - start < 1


def test_the_job_environment_sets_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMS_JOB_API_GIVE_UP_SECONDS", "42")
    with ImsClient(dead_url()) as client:
        assert client.give_up_seconds == 42
    monkeypatch.delenv("IMS_JOB_API_GIVE_UP_SECONDS")
    with ImsClient(dead_url()) as client:
        assert client.give_up_seconds is None  # CLI use: only the retry policy bounds it


STAGE = textwrap.dedent(
    """
    import sys, time
    from ims.client.http import ImsClient
    from ims.stages.__main__ import _stop_on_sigterm
    from ims.stages.reporting import Reporter, run_stage
    _stop_on_sigterm()
    client = ImsClient(sys.argv[1], give_up_seconds=3600, timeout=30)
    reporter = Reporter(sys.argv[2], client)
    print("ready", flush=True)
    sys.exit(run_stage("build", reporter, lambda: [reporter.status("building_image") for _ in range(100)]))
    """
)


@pytest.mark.parametrize("kind", ["dead", "hung"])
def test_sigterm_ends_a_stage_busy_reporting(kind: str, hung_server: str) -> None:
    url = dead_url() if kind == "dead" else hung_server
    process = subprocess.Popen([sys.executable, "-c", STAGE, url, JOB_ID], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        time.sleep(2)  # inside the retries of the report
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(15)
        took = time.monotonic() - start
        assert code == 1
        assert took < 7, took  # the last report tries for FINAL_REPORT_SECONDS at most
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")
def test_sigterm_to_the_launcher_ends_a_stage_that_ignores_it() -> None:
    """nsinit kills the job's namespace when the stage outlives SIGTERM by the grace time."""
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
    env = dict(os.environ, IMS_JOB_STOP_GRACE_SECONDS="2")
    process = subprocess.Popen([sys.executable, "-m", "ims.jobs.nsinit", "--", sys.executable, "-c", stubborn],
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "up"
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        assert time.monotonic() - start < 5
    finally:
        if process.poll() is None:
            process.kill()
