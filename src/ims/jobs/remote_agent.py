"""`python3 -m ims.jobs.remote_agent CMD JOB_ID ...`: IMS's helper on a remote build node (stdlib only).

It comes to the node in the job's code bundle (ims.jobs.remote_bundle) at `/tmp/ims_<job_id>/code` and
is run over SSH by the RemoteNodeRunner:

- `start JOB_ID STAGE DEADMAN`: the job's environment arrives as JSON on stdin (never on a command line or
  on disk); a supervisor in its own session starts `python3 -m ims.jobs.nsinit -- python3 -m ims.stages
  STAGE` in `/tmp/ims_<job_id>/image` with exactly that environment, its output in `job.log`, and writes
  the stage's exit status to `exit` when it ends. Prints `{"pid", "start", "boot"}` of the supervisor.
  When IMS has not polled for DEADMAN seconds (it lost the node, or was gone for that long) the
  supervisor stops the job and removes its directory itself: nothing is left behind on a node IMS
  cannot reach.
- `poll JOB_ID PID START OFFSET`: `{"alive", "exit", "boot", "offset", "log"}`: whether the supervisor
  still runs, the exit status once written, and the log bytes from OFFSET (base64, at most 512 KiB).
  Every poll is also IMS's sign of life for the dead man's switch (the time of `seen`).
- `stop JOB_ID PID START GRACE`: SIGTERM to the supervisor (it forwards to the stage), SIGKILL to the job's
  process tree after GRACE seconds.
- `cleanup JOB_ID`: remove `/tmp/ims_<job_id>` (refused while something is mounted below it).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ims.jobs.proc import boot_id, first_child, mounts_under, start_ticks

ROOT = Path("/tmp")
PREFIX = "ims_"
CHUNK = 512 * 1024
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def job_dir(job_id: str) -> Path:
    if not job_id or not all(ch.isalnum() or ch == "-" for ch in job_id):
        raise SystemExit(f"not a job id: {job_id!r}")
    return ROOT / f"{PREFIX}{job_id}"


def _alive(pid: int, start: int) -> bool:
    return start_ticks(pid) == start


def _write_atomic(path: Path, text: str) -> None:
    scratch = path.with_name(path.name + ".new")
    scratch.write_text(text)
    os.replace(scratch, path)


def start(job_id: str, stage: str, deadman: str) -> int:
    directory = job_dir(job_id)
    (directory / "seen").touch()
    env = json.loads(sys.stdin.read())
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise SystemExit("the job environment must be a JSON object of strings")
    code = directory / "code"
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "ims.jobs.remote_agent", "supervise", job_id, stage, str(float(deadman))],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=directory,
        env={"PYTHONPATH": str(code), "PATH": _PATH, "LANG": "C.UTF-8"},
        start_new_session=True,
        close_fds=True,
    )
    assert supervisor.stdin is not None
    supervisor.stdin.write(json.dumps(env).encode())
    supervisor.stdin.close()
    ticks = None
    for _ in range(50):  # /proc/<pid>/stat is there at once; a few tries for a slow node
        ticks = start_ticks(supervisor.pid)
        if ticks is not None:
            break
        time.sleep(0.01)
    print(json.dumps({"pid": supervisor.pid, "start": ticks or 0, "boot": boot_id()}))
    return 0


def supervise(job_id: str, stage: str, deadman: float) -> int:
    directory = job_dir(job_id)
    given = json.loads(sys.stdin.read())
    image = directory / "image"
    env = {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": "/root", "PYTHONUNBUFFERED": "1"}
    env.update(given)
    env["PYTHONPATH"] = str(directory / "code")
    env["IMAGE_ROOT_PARENT"] = str(image)
    python = sys.executable
    argv = [python, "-m", "ims.jobs.nsinit", "--", python, "-m", "ims.stages", stage]
    log = directory / "job.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, env=env, cwd=image, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, close_fds=True
        )

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            code = process.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            pass
        try:
            quiet = time.time() - (directory / "seen").stat().st_mtime
        except OSError:
            quiet = 0.0
        if quiet > deadman:
            _abandon(directory, process, quiet)
            return 0
    code = 128 - code if code < 0 else code
    _write_atomic(directory / "exit", str(code))
    return 0


def _abandon(directory: Path, process: subprocess.Popen[bytes], quiet: float) -> None:
    """IMS has been silent too long: it gave the job up. Stop the job and leave nothing behind."""
    with (directory / "job.log").open("a") as out:
        out.write(f"ims-agent: no word from IMS for {quiet:.0f} s: stopping the job and removing {directory}\n")
    launcher = process.pid
    init = first_child(launcher)
    with contextlib.suppress(ProcessLookupError):
        os.kill(launcher, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        for target in (launcher, init):
            if target is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, signal.SIGKILL)
        process.wait()
    if not mounts_under(directory):
        shutil.rmtree(directory, ignore_errors=True)


def poll(job_id: str, pid: int, start_tick: int, offset: int) -> int:
    directory = job_dir(job_id)
    with contextlib.suppress(OSError):
        (directory / "seen").touch()
    answer: dict[str, object] = {"alive": _alive(pid, start_tick), "boot": boot_id(), "exists": directory.is_dir()}
    exit_file = directory / "exit"
    answer["exit"] = int(exit_file.read_text().strip()) if exit_file.exists() else None
    chunk = b""
    try:
        with (directory / "job.log").open("rb") as source:
            source.seek(offset)
            chunk = source.read(CHUNK)
    except OSError:
        pass
    if len(chunk) == CHUNK and b"\n" in chunk:
        chunk = chunk[: chunk.rindex(b"\n") + 1]  # whole lines, unless one line is longer than a chunk
    elif chunk and not chunk.endswith(b"\n") and answer["alive"]:
        cut = chunk.rfind(b"\n")
        chunk = chunk[: cut + 1] if cut >= 0 else b""  # the rest of the line comes with the next poll
    answer["offset"] = offset + len(chunk)
    answer["log"] = base64.b64encode(chunk).decode()
    print(json.dumps(answer))
    return 0


def stop(job_id: str, pid: int, start_tick: int, grace: float) -> int:
    job_dir(job_id)
    if not _alive(pid, start_tick):
        return 0
    launcher = first_child(pid)  # the nsinit launcher; its child is the job's init
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return 0
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid, start_tick):
            return 0
        time.sleep(0.1)
    init = first_child(launcher) if launcher is not None else None
    for target in (launcher, init, pid):
        if target is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid, start_tick) and time.monotonic() < deadline:
        time.sleep(0.1)
    return 0


def cleanup(job_id: str) -> int:
    directory = job_dir(job_id)
    if not directory.exists():
        return 0
    mounted = mounts_under(directory)
    if mounted:
        print(f"{directory} still has mounts ({', '.join(mounted[:3])}); not removing it", file=sys.stderr)
        return 3
    shutil.rmtree(directory)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    command, job_id, rest = argv[0], argv[1], argv[2:]
    if command == "start":
        return start(job_id, rest[0], rest[1])
    if command == "supervise":
        return supervise(job_id, rest[0], float(rest[1]))
    if command == "poll":
        return poll(job_id, int(rest[0]), int(rest[1]), int(rest[2]))
    if command == "stop":
        return stop(job_id, int(rest[0]), int(rest[1]), float(rest[2]))
    if command == "cleanup":
        return cleanup(job_id)
    print(f"unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
