"""One kiwi-ng build at a time per host.

kiwi keeps one shared package cache per host (`/var/cache/kiwi`), used by apt on the host during the
bootstrap phase and bind-mounted into the image root afterwards. apt locks it without waiting, so a
second build running at the same time fails at once with "Could not get lock
/var/cache/kiwi/apt-get/archives/lock". Builds of concurrent create jobs therefore queue on a host-wide
lock; the shared cache is worth keeping (later builds download nothing), and the CPU-bound steps
(mksquashfs, dracut) use every core anyway.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = "ims-kiwi-build.lock"
REMIND_SECONDS = 60.0


def lock_path() -> Path:
    for directory in (Path("/run/lock"), Path("/run")):
        if directory.is_dir() and os.access(directory, os.W_OK):
            return directory / LOCK_NAME
    return Path(tempfile.gettempdir()) / LOCK_NAME


@contextmanager
def kiwi_build_lock(say: Callable[[str], None], path: Path | None = None, poll_seconds: float = 1.0) -> Iterator[float]:
    """Hold the host's kiwi build lock; yields the seconds spent waiting for it.

    Polls instead of blocking, so the wait is reported and a stop signal (JobStopped) is raised promptly.
    """
    path = path or lock_path()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        start = time.monotonic()
        reminded = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if reminded == 0.0 or waited - reminded >= REMIND_SECONDS:
                    say(f"another kiwi-ng build runs on this host; waiting for it ({waited:.0f} s so far)")
                    reminded = max(waited, 1e-6)
                time.sleep(poll_seconds)
        waited = time.monotonic() - start
        if reminded:
            say(f"the other kiwi-ng build finished; this one starts after waiting {waited:.0f} s")
        yield waited
    finally:
        os.close(fd)  # closing releases the lock
