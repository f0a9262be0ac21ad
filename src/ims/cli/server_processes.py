"""`ims serve --workers N`: N server processes, each with a listening socket of its own on the one port.

uvicorn's supervisor hands every process the same listening socket. The process that wakes first on a burst
of new connections then accepts all it finds (asyncio accepts up to the backlog per wake), and keeps them:
with 32 keep-alive clients one process held 27–30 of them and ran at one CPU while the machine was 30% idle.
Here each process listens on its own socket bound with SO_REUSEPORT, so the kernel spreads new connections
over the processes. uvicorn's supervisor is kept for the rest (health pings, restarts, signals).
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

from uvicorn import Config
from uvicorn.server import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

log = logging.getLogger(__name__)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def free_port_or_exit(host: str, port: int) -> int:
    """The port to serve on, checked unused: sockets bound with SO_REUSEPORT would share a port with another
    server of the same user without a word, so a plain bind proves first that nobody listens there. Port 0
    becomes the free port the kernel picks, for all the processes."""
    try:
        probe = _bind(host, port, reuse_port=False)
    except OSError as exc:
        # Worded as asyncio words it for a single server process, so tools that look for it find it.
        reason = (exc.strerror or str(exc)).lower()
        log.error("[Errno %s] error while attempting to bind on address (%r, %s): %s", exc.errno, host, port, reason)
        sys.exit(STARTUP_FAILURE)
    with probe:
        chosen: int = probe.getsockname()[1]
    return chosen


class BalancedProcesses(Multiprocess):
    """uvicorn's supervisor, giving every process it starts (restarts included) a socket of its own."""

    def __init__(self, config: Config) -> None:
        super().__init__(config, sockets=[])

    @property  # type: ignore[override]
    def sockets(self) -> list[socket.socket]:
        """Read once per process started: a new socket, bound here and listened on by that process."""
        sock = _bind(self.config.host, self.config.port, reuse_port=True)
        sock.set_inheritable(True)
        self._handed.append(sock)
        return [sock]

    @sockets.setter
    def sockets(self, value: Any) -> None:
        self._handed: list[socket.socket] = []

    def init_processes(self) -> None:
        super().init_processes()
        self._close_handed()

    def restart_all(self) -> None:
        try:
            super().restart_all()
        finally:
            self._close_handed()

    def keep_subprocess_alive(self) -> None:
        try:
            super().keep_subprocess_alive()
        finally:
            self._close_handed()

    def _close_handed(self) -> None:
        """The started processes hold their sockets now. Closed here, a socket ends with its process: a dead
        process's socket must not stay in the port's group, taking connections nobody accepts."""
        for sock in self._handed:
            sock.close()
        self._handed.clear()
