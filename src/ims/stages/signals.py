"""The signal files of the `/mnt/image` contract, and the wait for the user's verdict."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ims.stages.rootpath import resolve_in_root

COMPLETE = "complete"
FAILED = "failed"
READY = "ready"
EXITING = "exiting"
STALE_AT_START = (READY, COMPLETE, EXITING, FAILED)


class Verdict(Enum):
    COMPLETE = COMPLETE
    FAILED = FAILED
    TIMED_OUT = "timed_out"
    SERVER_GONE = "server_gone"


@dataclass(frozen=True)
class SignalPlaces:
    """Where the user's flags may appear.

    Not jailed: `<parent>/complete|failed`. Jailed: the user sees the image as `/`, so the flags are
    `/tmp/complete|failed` inside the image root. The parent location is honoured in both modes so
    an operator on the host can always end a job.
    """

    parent: Path
    image_root: Path | None  # set when jailed
    session: Path | None = None  # an unjailed sandbox's /mnt/image, when it is not `parent` itself

    def paths(self, name: str) -> list[Path]:
        places = [self.parent / name]
        if self.session is not None:
            places.append(self.session / name)
        if self.image_root is not None:
            # Only the directory is resolved: the flag itself is never followed, so clearing a
            # `/tmp/complete -> /etc/passwd` link removes the link and nothing else.
            places.append(resolve_in_root(self.image_root, "tmp") / name)
        return places

    def present(self, name: str) -> bool:
        return any(_is_flag(path) for path in self.paths(name))

    def clear(self, names: tuple[str, ...] = (COMPLETE, FAILED)) -> None:
        """Remove flags so they neither trigger the next wait nor end up inside the packaged image."""
        for name in names:
            for path in self.paths(name):
                if _is_flag(path):
                    path.unlink()

    def wait(
        self,
        poll_seconds: float,
        limit_seconds: float = 0.0,
        still_serving: Callable[[], bool] = lambda: True,
    ) -> Verdict:
        deadline = time.monotonic() + limit_seconds if limit_seconds > 0 else None
        while True:
            # `failed` wins: a user who wrote both did not want the result kept.
            if self.present(FAILED):
                return Verdict.FAILED
            if self.present(COMPLETE):
                return Verdict.COMPLETE
            if not still_serving():
                return Verdict.SERVER_GONE
            if deadline is not None and time.monotonic() >= deadline:
                return Verdict.TIMED_OUT
            time.sleep(poll_seconds)


def _is_flag(path: Path) -> bool:
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    # A directory or device named `complete` is not a flag a user meant to write.
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)
