"""SSH to remote build nodes with OpenSSH's client: IMS's key, one known_hosts file per node, argv lists only.

The remote command is an argv list too: each word is quoted with shlex before it reaches the node's
shell, so no value (an xname, a job id, a path) is ever read as shell syntax. Host keys: the node's
first successful contact records its key (StrictHostKeyChecking=accept-new on an empty file); from then
on the file holds that key and StrictHostKeyChecking=yes refuses any other, which marks the node
unusable with the reason (ims.jobs.nodekeys).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ims.jobs import nodekeys
from ims.settings import Settings
from ims.store.db import Database

CONNECT_TIMEOUT = 5
CHANGED_KEY_MARKERS = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key verification failed")


class NodeRefused(RuntimeError):
    """IMS will not talk to this node (its host key changed); the message says why and what to do."""


@dataclass(frozen=True)
class SshResult:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error(self) -> str:
        """The client's own complaint (connection refused, timed out, ...), one line."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        lines = [line for line in lines if not line.startswith(("Warning: Permanently added", "@"))]
        return (lines[-1] if lines else f"ssh exited with status {self.returncode}")[:300]


def host_key_changed_reason(xname: str, stderr: str) -> str:
    fingerprint = ""
    for line in stderr.splitlines():
        if "key sent by the remote host is" in line or line.strip().startswith("SHA256:"):
            fingerprint = line.strip().split()[-1]
    shown = f" (it now shows {fingerprint})" if fingerprint.startswith("SHA256:") else ""
    return (
        f"the host key of {xname} changed{shown}: IMS refuses the node. If the node was reinstalled, "
        f"register it again (POST /v3/remote-build-nodes) to trust its new key."
    )


class NodeSsh:
    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self.known_hosts_dir = nodekeys.ssh_dir(settings) / "known_hosts"

    def key(self) -> nodekeys.NodeKey:
        return nodekeys.node_key(self.settings)

    # --- argv
    def _known_hosts(self, xname: str) -> tuple[Path, bool]:
        """The node's known_hosts file from the database; True when the node's key is not known yet."""
        trust = nodekeys.trust(self.database, xname)
        if trust.unusable_reason:
            raise NodeRefused(trust.unusable_reason)
        self.known_hosts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # One file per call: concurrent calls to the same node never see each other's half-written file.
        handle, name = tempfile.mkstemp(prefix=f"{_file_safe(xname)}.", dir=self.known_hosts_dir)
        with os.fdopen(handle, "w") as out:
            out.write(trust.host_keys or "")
        return Path(name), not trust.host_keys

    def argv(self, xname: str, known_hosts: Path, first: bool, remote: list[str], timeout: float) -> list[str]:
        connect = max(1, min(CONNECT_TIMEOUT, int(timeout)))
        options = {
            "BatchMode": "yes",
            "IdentitiesOnly": "yes",
            "UserKnownHostsFile": str(known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": "accept-new" if first else "yes",
            "UpdateHostKeys": "no",
            "CheckHostIP": "no",
            "ConnectTimeout": str(connect),
            "ServerAliveInterval": "5",
            "ServerAliveCountMax": "2",
            "LogLevel": "ERROR",
        }
        argv = ["ssh", "-F", "none", "-i", str(self.key().private), "-l", "root"]
        for name, value in options.items():
            argv += ["-o", f"{name}={value}"]
        return [*argv, "--", xname, shlex.join(remote)]

    def _after(self, xname: str, known_hosts: Path, first: bool, result: SshResult) -> SshResult:
        try:
            if any(marker in result.stderr for marker in CHANGED_KEY_MARKERS) and not first:
                reason = host_key_changed_reason(xname, result.stderr)
                nodekeys.mark_unusable(self.database, xname, reason)
                raise NodeRefused(reason)
            if first and result.returncode != 255:
                lines = known_hosts.read_text().strip()
                if lines:
                    nodekeys.remember_host_keys(self.database, xname, lines + "\n")
            return result
        finally:
            with contextlib.suppress(OSError):
                known_hosts.unlink()

    # --- calls
    def run(self, xname: str, remote: list[str], *, input: bytes | None = None, timeout: float = 30) -> SshResult:
        known_hosts, first = self._known_hosts(xname)
        argv = self.argv(xname, known_hosts, first, remote, timeout)
        try:
            done = subprocess.run(
                argv,
                input=input,
                capture_output=True,
                timeout=timeout,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
            result = SshResult(done.returncode, done.stdout, done.stderr.decode(errors="replace"))
        except subprocess.TimeoutExpired:
            result = SshResult(255, b"", f"no answer within {timeout:g} s")
        except OSError as exc:
            result = SshResult(255, b"", f"could not run ssh: {exc}")
        return self._after(xname, known_hosts, first, result)

    async def run_async(self, xname: str, remote: list[str], *, timeout: float) -> SshResult:
        """The same call without a thread of the caller's: an asyncio subprocess, killed when `timeout` passes.

        The database reads and writes around it (the trusted key) run on asyncio's own executor, never on
        the event loop."""
        known_hosts, first = await asyncio.to_thread(self._known_hosts, xname)
        argv = self.argv(xname, known_hosts, first, remote, timeout)
        process: asyncio.subprocess.Process | None = None
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
            result = SshResult(process.returncode or 0, stdout, stderr.decode(errors="replace"))
        except OSError as exc:
            result = SshResult(255, b"", f"could not run ssh: {exc}")
        except (TimeoutError, asyncio.CancelledError) as exc:
            if process is not None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await asyncio.shield(process.wait())
            if isinstance(exc, asyncio.CancelledError):
                with contextlib.suppress(OSError):
                    known_hosts.unlink()
                raise
            result = SshResult(255, b"", f"no answer within {timeout:g} s")
        return await asyncio.to_thread(self._after, xname, known_hosts, first, result)


def _file_safe(xname: str) -> str:
    return "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in xname)[:100]
