"""Where a customize job's downloaded image waits for unsquashfs: in memory when it fits, else on disk.

The archive is read by unsquashfs (and by the md5 for the blocks it could not keep), then dropped. On disk its
bytes are written back while unsquashfs writes the image root beside them. In an anonymous memory file (memfd)
nothing of the archive reaches the disk, and the memory is freed when the file is closed: the job's download
of a 623 MB rootfs went from 1.38-1.67 s to 1.13-1.27 s (docs/performance.md, customize jobs).

The memory file is taken only when the archive is at most a quarter of the memory this job can still use
(MemAvailable, and its cgroup's limit when it has one), so other jobs and unsquashfs's page cache keep room.
unsquashfs reads it as `/proc/self/fd/<n>`, with the descriptor passed to it (`pass_fds`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

SHARE_OF_AVAILABLE_MEMORY = 4  # the archive may take at most 1/4 of what is available


class ArchiveScratch:
    """The place of one downloaded archive; `place` is called once with its size, `close` frees it."""

    def __init__(self, disk_path: Path) -> None:
        self.disk_path = disk_path
        self._fd: int | None = None

    @property
    def in_memory(self) -> bool:
        return self._fd is not None

    @property
    def path(self) -> Path:
        return self.disk_path if self._fd is None else Path(f"/proc/self/fd/{self._fd}")

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """The descriptor a tool must inherit to open `path`."""
        return () if self._fd is None else (self._fd,)

    def place(self, size: int | None) -> Path:
        """The path to write the archive of `size` bytes to (None: the server did not say, so on disk)."""
        fits = size is not None and size <= memory_available() // SHARE_OF_AVAILABLE_MEMORY
        if self._fd is None and fits and os.path.isdir("/proc/self/fd"):  # no /proc: no path to give unsquashfs
            with contextlib.suppress(OSError):  # no memfd here (seccomp, an old kernel): the disk always works
                self._fd = os.memfd_create(self.disk_path.name, os.MFD_CLOEXEC)
        return self.path

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.disk_path.unlink(missing_ok=True)


def memory_available() -> int:
    """Bytes this process can still fill: MemAvailable, bounded by its cgroup v2 limit; 0 when unknown."""
    available = _meminfo_available()
    limit = _cgroup_room()
    return available if limit is None else min(available, limit)


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cgroup_room() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2); None when it has no limit or none is seen."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as groups:
            entry = next((line.strip() for line in groups if line.startswith("0::")), "")
        if not entry:
            return None
        group = Path("/sys/fs/cgroup") / entry[3:].lstrip("/")
        limit = (group / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((group / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None
