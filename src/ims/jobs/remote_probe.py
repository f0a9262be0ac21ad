"""Live status of remote build nodes: one SSH call per node, all nodes at once, a short timeout, a small cache.

The probe runs a constant Python program with the node's python3 and reads its JSON: `uname -m`, the
python version, the tools of the node contract (squashfs-tools, bubblewrap, kiwi-ng for create jobs),
the `/tmp/ims_<job_id>` directories (one per job on the node, the original's convention), the boot id.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ims.jobs.remote_ssh import NodeRefused, NodeSsh

MIN_PYTHON = (3, 11)
REQUIRED_TOOLS = {"unsquashfs": "squashfs-tools", "mksquashfs": "squashfs-tools", "bwrap": "bubblewrap"}
CREATE_TOOLS = {"kiwi-ng": "kiwi-ng"}

PROBE = r"""
import json, os, shutil, sys
path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
tools = {name: shutil.which(name, path=path) for name in ("unsquashfs", "mksquashfs", "bwrap", "kiwi-ng")}
try:
    jobs = sorted(n for n in os.listdir("/tmp") if n.startswith("ims_") and os.path.isdir("/tmp/" + n))
except OSError:
    jobs = []
try:
    boot = open("/proc/sys/kernel/random/boot_id").read().strip()
except OSError:
    boot = ""
emulated = []
if os.path.isdir("/proc/sys/fs/binfmt_misc"):
    for name in sorted(os.listdir("/proc/sys/fs/binfmt_misc")):
        try:
            if name.startswith("qemu-") and open("/proc/sys/fs/binfmt_misc/" + name).readline().strip() == "enabled":
                emulated.append(name[5:])
        except OSError:
            pass
print(json.dumps({"arch": os.uname().machine, "python": list(sys.version_info[:3]), "tools": tools,
                  "jobs": jobs, "boot": boot, "emulated": emulated}))
"""


@dataclass(frozen=True)
class NodeStatus:
    xname: str
    reachable: bool
    ssh_status: str
    tools_status: str
    arch: str
    jobs: list[str] = field(default_factory=list)
    ready: bool = False
    can_create: bool = False
    emulated: list[str] = field(default_factory=list)  # arches the node runs through qemu (binfmt_misc)
    checked: float = 0.0

    def public(self) -> dict[str, Any]:
        """The original's status object."""
        return {
            "xname": self.xname,
            "sshStatus": self.ssh_status,
            "podmanStatus": self.tools_status,
            "nodeArch": self.arch,
            "numCurrentJobs": len(self.jobs) if self.reachable else -1,
            "ableToRunJobs": self.ready,
        }


def _unreachable(xname: str, message: str) -> NodeStatus:
    return NodeStatus(
        xname, False, f"Unable to connect to node. Error: {message}", "Unknown", "Unknown", checked=time.monotonic()
    )


def interpret(xname: str, stdout: bytes) -> NodeStatus:
    try:
        facts = json.loads(stdout.decode().strip().splitlines()[-1])
        python = tuple(int(part) for part in facts["python"])
        tools: dict[str, str | None] = facts["tools"]
        arch = str(facts["arch"])
        jobs = [str(name) for name in facts["jobs"]]
        emulated = [str(name) for name in facts.get("emulated") or []]
    except (ValueError, KeyError, IndexError, TypeError):
        return NodeStatus(
            xname,
            True,
            "SSH connection established.",
            "Unknown: the node's answer was unreadable",
            "Unknown",
            checked=time.monotonic(),
        )
    missing = sorted({package for tool, package in REQUIRED_TOOLS.items() if not tools.get(tool)})
    problems = []
    if python < MIN_PYTHON:
        problems.append(f"python3 {'.'.join(map(str, python))} is older than 3.11")
    if missing:
        problems.append("missing " + ", ".join(missing))
    version = ".".join(map(str, python))
    kiwi = "kiwi-ng" if tools.get("kiwi-ng") else "no kiwi-ng (customize jobs only)"
    if problems:
        text = "Job tools not usable: " + "; ".join(problems) + "."
    else:
        text = f"Job tools present: python3 {version}, squashfs-tools, bubblewrap, {kiwi}."
    return NodeStatus(
        xname,
        True,
        "SSH connection established.",
        text,
        arch,
        jobs,
        ready=not problems,
        can_create=not problems and bool(tools.get("kiwi-ng")),
        emulated=emulated,
        checked=time.monotonic(),
    )


class Prober:
    """Probes with a per-process cache (IMS_REMOTE_STATUS_CACHE_SECONDS) shared by the API and job selection."""

    def __init__(self, ssh: NodeSsh) -> None:
        self.ssh = ssh
        self._cache: dict[str, NodeStatus] = {}
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    @property
    def timeout(self) -> float:
        return self.ssh.settings.remote_probe_timeout

    def cached(self, xname: str) -> NodeStatus | None:
        ttl = self.ssh.settings.remote_status_cache_seconds
        with self._lock:
            status = self._cache.get(xname)
        if status is not None and time.monotonic() - status.checked < ttl:
            return status
        return None

    def forget(self, xname: str) -> None:
        with self._lock:
            self._cache.pop(xname, None)

    async def probe(self, xname: str) -> NodeStatus:
        """The node's status; one probe per node at a time, whoever asks (requests share its answer)."""
        status = self.cached(xname)
        if status is not None:
            return status
        with self._lock:
            running = self._running.get(xname)
            if running is None:
                self._running[xname] = threading.Event()
        if running is not None:
            await asyncio.to_thread(running.wait, self.timeout + 5)
            with self._lock:
                shared = self._cache.get(xname)
            if shared is not None:
                return shared
        try:
            return await self._probe(xname)
        finally:
            with self._lock:
                done = self._running.pop(xname, None) if running is None else None
            if done is not None:
                done.set()

    async def _probe(self, xname: str) -> NodeStatus:
        try:
            result = await self.ssh.run_async(xname, ["python3", "-c", PROBE], timeout=self.timeout)
        except NodeRefused as exc:
            status = NodeStatus(xname, False, f"Refused by IMS: {exc}", "Unknown", "Unknown", checked=time.monotonic())
        else:
            if result.returncode == 255:
                status = _unreachable(xname, result.error())
            elif result.returncode == 127:
                status = NodeStatus(
                    xname,
                    True,
                    "SSH connection established.",
                    "Job tools not usable: python3 is missing.",
                    "Unknown",
                    checked=time.monotonic(),
                )
            elif not result.ok:
                status = NodeStatus(
                    xname,
                    True,
                    "SSH connection established.",
                    f"Unknown: the check failed ({result.error()})",
                    "Unknown",
                    checked=time.monotonic(),
                )
            else:
                status = interpret(xname, result.stdout)
        with self._lock:
            self._cache[xname] = status
        return status

    async def probe_all(self, xnames: list[str]) -> list[NodeStatus]:
        """Every node at once; whatever has not answered when the probe timeout (plus a little) is over counts
        as unreachable, so the whole answer is bounded whatever the nodes and this host's load do."""
        tasks = [asyncio.ensure_future(self.probe(xname)) for xname in xnames]
        if not tasks:
            return []
        await asyncio.wait(tasks, timeout=self.timeout + 1.0)
        statuses = []
        for xname, task in zip(xnames, tasks, strict=True):
            if task.done() and not task.cancelled() and task.exception() is None:
                statuses.append(task.result())
            else:
                task.cancel()
                statuses.append(_unreachable(xname, f"no answer within {self.timeout:g} s"))
        return statuses

    def probe_all_sync(self, xnames: list[str]) -> list[NodeStatus]:
        """For code on a worker thread (POST /jobs runs there): its own short-lived event loop."""
        if not xnames:
            return []
        return asyncio.run(self.probe_all(xnames))
