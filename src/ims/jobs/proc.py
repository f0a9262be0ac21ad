"""What /proc says about a process: is it still the one we started, and what is mounted where."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return text[text.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot; with the pid it names one process for good."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


@dataclass(frozen=True)
class ProcessId:
    pid: int
    start: int
    boot: str

    @classmethod
    def of(cls, pid: int) -> ProcessId:
        return cls(pid, start_ticks(pid) or 0, boot_id())

    def alive(self) -> bool:
        """True while this very process runs (a reused pid or a zombie does not count)."""
        if self.boot != boot_id():
            return False
        fields = _stat_fields(self.pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return int(fields[19]) == self.start


def pid_alive(pid: int) -> bool:
    """Whether some process has this pid (for owners identified by pid alone)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def first_child(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def send(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this mount namespace."""
    root = os.path.realpath(path)
    found: list[str] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) < 5:
            continue
        point = _unescape(parts[4])
        if point == root or point.startswith(root.rstrip("/") + "/"):
            found.append(point)
    return found
