"""LocalRunner and its namespace launcher with a tiny real stage (`sh -c SCRIPT`), as root."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from tests.jobs.kit import processes_of
from tests.stages.kit import wait_for

from ims.jobs.local import LocalRunner
from ims.jobs.proc import mounts_under
from ims.jobs.runner import JobSpec, RunnerError, RunnerHandle

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jobs run as root")


def _runner(work_root: Path, script: str) -> LocalRunner:
    # The stage's name arrives as $0 of the script.
    return LocalRunner(work_root / "runner-jobs", stage_command=["/bin/sh", "-c", script])


def _start(runner: LocalRunner, **env: str) -> tuple[str, RunnerHandle]:
    job_id = str(uuid.uuid4())
    spec = JobSpec(job_id=job_id, stage="customize", env={"IMS_JOB_ID": job_id, **env})
    return job_id, runner.start({"id": job_id}, spec)


def _wait_end(runner: LocalRunner, handle: RunnerHandle, timeout: float = 20) -> None:
    wait_for(lambda: not runner.is_alive(handle), timeout, "the job's process to end")


def test_status_environment_and_log(work_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMS_TEST_SERVER_ONLY", "leak?")
    runner = _runner(
        work_root,
        'echo "stage $0 pid $$ in $(pwd)"; echo "parent=$IMAGE_ROOT_PARENT leak=$IMS_TEST_SERVER_ONLY"; exit 3',
    )
    job_id, handle = _start(runner, MARK="m")
    _wait_end(runner, handle)
    assert runner.exit(handle).code == 3
    log = runner.log_path(job_id).read_text()
    image = runner.image_dir(job_id)
    # PID 1 of the job's namespace is its init; the stage is the next process.
    assert f"stage customize pid 2 in {image}" in log
    assert f"parent={image} leak=\n" in log  # only the job's own environment reaches the stage
    assert "starting stage `customize`" in log
    assert oct(runner.job_dir(job_id).stat().st_mode & 0o777) == "0o755"


def test_signal_deaths_are_reported(work_root: Path) -> None:
    runner = _runner(work_root, "kill -KILL $$")
    _, handle = _start(runner)
    _wait_end(runner, handle)
    ended = runner.exit(handle)
    assert ended.code == 137 and ended.describe() == "was killed by SIGKILL"


def test_mounts_stay_inside_the_job(work_root: Path) -> None:
    runner = _runner(
        work_root,
        'mkdir -p "$IMAGE_ROOT_PARENT/m" && mount -t tmpfs none "$IMAGE_ROOT_PARENT/m" && ls /proc | grep -c "^[0-9]" '
        '&& touch "$IMAGE_ROOT_PARENT/mounted" && sleep 30',
    )
    job_id, handle = _start(runner)
    wait_for(lambda: (runner.image_dir(job_id) / "mounted").exists(), 10, "the stage to mount")
    assert mounts_under(runner.job_dir(job_id)) == []  # the host sees none of it
    runner.stop(handle, grace=5)
    assert not runner.is_alive(handle)
    runner.cleanup(job_id, keep_log=True)
    assert [p.name for p in runner.job_dir(job_id).iterdir()] == ["job.log"]
    # Its own /proc shows only the job's processes: init, the stage, ls, grep.
    assert "\n4\n" in runner.log_path(job_id).read_text()


def test_stop_ends_the_whole_tree_even_daemons(work_root: Path) -> None:
    runner = _runner(work_root, "setsid sleep 1000 & sleep 1000")
    job_id, handle = _start(runner)
    wait_for(lambda: len(processes_of(job_id)) >= 4, 10, "the daemon to start")
    started = time.monotonic()
    runner.stop(handle, grace=5)
    wait_for(lambda: processes_of(job_id) == [], 10, "the namespace's processes to end")
    assert time.monotonic() - started < 8  # SIGTERM was enough: the stage went, the namespace with it
    assert runner.exit(handle).code == 128 + 15


def test_stop_escalates_to_sigkill(work_root: Path) -> None:
    runner = _runner(work_root, "trap '' TERM; touch \"$IMAGE_ROOT_PARENT/ready\"; while true; do sleep 1; done")
    job_id, handle = _start(runner)
    wait_for(lambda: (runner.image_dir(job_id) / "ready").exists(), 10, "the stage to ignore SIGTERM")
    runner.stop(handle, grace=1)
    # The kernel ends the rest of the PID namespace as its init dies; on a loaded machine that takes a moment.
    wait_for(lambda: processes_of(job_id) == [], 10, "the namespace's processes to end")
    assert runner.exit(handle).code == 137


def test_a_new_runner_finds_the_process_again(work_root: Path) -> None:
    first = _runner(work_root, "sleep 1000")
    job_id, handle = _start(first)
    stored = RunnerHandle.from_json(handle.to_json())
    second = LocalRunner(work_root / "runner-jobs")  # as after a restart: not its child
    assert second.can_watch(stored) and second.is_alive(stored)
    reused = RunnerHandle.from_json({**handle.to_json(), "start": handle.start + 1})
    assert not second.is_alive(reused)  # same pid, another process: not ours
    second.stop(stored, grace=5)
    assert not second.is_alive(stored)
    assert second.exit(stored).code is None
    assert not LocalRunner(work_root / "runner-jobs", host="elsewhere").can_watch(stored)
    first.exit(handle)


def test_cleanup_never_deletes_through_a_mount(work_root: Path) -> None:
    runner = _runner(work_root, "true")
    job_id, handle = _start(runner)
    _wait_end(runner, handle)
    target = runner.image_dir(job_id) / "host-mount"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(target)], check=True)
    try:
        (target / "precious").write_text("x")
        with pytest.raises(RunnerError, match="still has mounts"):
            runner.cleanup(job_id, keep_log=False)
        assert (target / "precious").exists()
    finally:
        subprocess.run(["umount", str(target)], check=True)
    runner.cleanup(job_id, keep_log=False)
    assert not runner.job_dir(job_id).exists()


def test_job_ids_never_become_paths(work_root: Path) -> None:
    runner = _runner(work_root, "true")
    for bad in ("../x", "a/b", "", "."):
        with pytest.raises(RunnerError):
            runner.job_dir(bad)
