"""`python -m ims.jobs.nsinit -- ARGV...`: run ARGV in a private mount and PID namespace.

Three processes, like a pod with an init:

- the launcher stays in the host's namespaces; the runner records its pid and waits on it. It forwards
  SIGTERM/SIGINT/SIGHUP to the namespace's init and exits with the stage's status: the stage's exit
  code, or 128+N when signal N ended it (`unshare --fork` reports a signal death as plain 1);
- init is PID 1 of the new PID namespace: it mounts a fresh /proc, reaps orphans and forwards signals to
  the stage. When it exits the kernel kills whatever is left in the namespace (sshd, user shells), and it
  dies with the launcher (PDEATHSIG), so killing the launcher tears the whole job down;
- the stage is ARGV, an ordinary child of init, so SIGTERM has its default meaning for it.

The network namespace is shared on purpose: stages reach IMS and S3 on loopback and serve SSH there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def exit_code(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def _forward_to(pid: int, hard_stop: bool = False) -> Callable[[int, FrameType | None], None]:
    """Forward a signal. With `hard_stop` (the launcher's SIGTERM), init is killed outright if the stage has
    not ended within IMS_JOB_STOP_GRACE_SECONDS (default 15): SIGTERM ends a job within seconds whatever it
    is doing, and init's death takes everything in the namespace with it."""

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        if hard_stop:
            signal.signal(signal.SIGALRM, lambda *_: _kill(pid))
            signal.alarm(_grace_seconds())

    return forward


def _kill(pid: int) -> None:
    _say("the stage did not end after SIGTERM; killing the job's namespace")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _grace_seconds() -> int:
    try:
        return max(1, int(float(os.environ.get("IMS_JOB_STOP_GRACE_SECONDS", "15"))))
    except ValueError:
        return 15


def _say(message: str) -> None:
    print(f"ims-nsinit: {message}", file=sys.stderr, flush=True)


def _run_init(argv: list[str]) -> None:
    """PID 1 of the job's namespace; never returns."""
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
        stage = os.fork()
        if stage == 0:
            try:
                os.execvp(argv[0], argv)  # noqa: S606 - an argv list, never a shell
            except OSError as exc:
                _say(f"cannot run {argv[0]}: {exc}")
            os._exit(127)
        for signum in FORWARDED:
            signal.signal(signum, _forward_to(stage))
        while True:
            pid, status = os.wait()
            if pid == stage:
                os._exit(exit_code(status))
    except BaseException as exc:  # noqa: BLE001 - PID 1 must never unwind into the launcher's code
        _say(f"init failed: {exc}")
        os._exit(1)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        _say("usage: python -m ims.jobs.nsinit -- COMMAND [ARG...]")
        return 2
    try:
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID), "unshare")
        # Nothing mounted inside the job (proc, the jail, image mounts) propagates back to the host.
        _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    except OSError as exc:
        _say(str(exc))
        return 1
    init = os.fork()
    if init == 0:
        _run_init(argv)
    for signum in FORWARDED:
        signal.signal(signum, _forward_to(init, hard_stop=signum == signal.SIGTERM))
    try:
        _, status = os.waitpid(init, 0)
    except ChildProcessError:
        return 1
    code = exit_code(status)
    if code >= 128:
        _say(f"the stage ended by signal {signal.Signals(code - 128).name}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
