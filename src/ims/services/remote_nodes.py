"""Remote build nodes: registration records, IMS's node key, live status, and the choice of a node for a job.

Status comes from a real probe over SSH (ims.jobs.remote_probe): all nodes at once, each bounded by
IMS_REMOTE_PROBE_TIMEOUT, cached for IMS_REMOTE_STATUS_CACHE_SECONDS. The async entry points run the
probes as asyncio subprocesses, so a slow or dead node never holds a thread of the API's pool.

Selection (POST /jobs): among the ready nodes of the job's arch (and with kiwi-ng for a create job) the
one with the fewest jobs wins. A node's load is the larger of the `/tmp/ims_*` directories the probe saw
and this IMS's unfinished jobs placed on it; the job being created counts at once (it is inserted in
the same transaction, under a lock on the nodes' state rows), so a burst spreads evenly.

Deleting a node that runs jobs: the record goes at once and no new job is placed there; the jobs already
running on it go on and are watched to their end (their handles name the node), with the node's host key
still checked. The trusted key is forgotten when the node is registered again, or at deletion when no job
of this IMS is on it.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from ims.domain import schemas
from ims.domain.errors import NotFound, Unavailable, ValidationFailed
from ims.domain.timeutil import format_timestamp, utcnow
from ims.domain.validation import check_xname
from ims.jobs import nodekeys, state
from ims.jobs.ports import parse_range
from ims.jobs.remote_probe import NodeStatus, Prober
from ims.jobs.remote_ssh import NodeSsh
from ims.services.context import ServiceContext
from ims.settings import Settings
from ims.store import repository
from ims.store.tables import jobs as jobs_table
from ims.store.tables import remote_build_node_state as state_table

log = logging.getLogger(__name__)

UNKNOWN_STATUS = {
    "sshStatus": "Unknown",
    "podmanStatus": "Unknown",
    "nodeArch": "Unknown",
    "numCurrentJobs": -1,
    "ableToRunJobs": False,
}


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {"xname": record["xname"]}


@dataclass
class NodeAccess:
    """Per process (per service context): the SSH client side and the probe cache."""

    ssh: NodeSsh
    prober: Prober


def node_access(ctx: ServiceContext) -> NodeAccess:
    found = ctx.__dict__.get("_remote_node_access")
    if found is None:
        ssh = NodeSsh(ctx.database, ctx.settings)
        found = ctx.__dict__.setdefault("_remote_node_access", NodeAccess(ssh, Prober(ssh)))
    return found  # type: ignore[no-any-return]


def _check_xname(xname: str) -> None:
    problem = check_xname(xname)
    if problem:
        raise ValidationFailed({"xname": [problem]})


def remote_ssh_port(settings: Settings, used: set[int]) -> int:
    """A customize job's sshd port on a node: one no unfinished job holds (the node's own ports are its own)."""
    try:
        ports = parse_range(settings.job_ssh_ports)
    except ValueError as exc:
        raise Unavailable(f"IMS_JOB_SSH_PORTS is invalid: {exc}") from None
    free = [port for port in ports if port not in used]
    if not free:
        raise Unavailable("No free SSH port for the job in IMS_JOB_SSH_PORTS: delete finished jobs or widen the range.")
    return random.choice(free)  # noqa: S311 - spreading ports, not a secret


def active_jobs_by_node(conn: Connection) -> dict[str, int]:
    """This IMS's unfinished jobs per remote node (queued ones included: they hold their place)."""
    query = select(jobs_table.c.data).where(jobs_table.c.phase != state.DONE, jobs_table.c.deleted.is_(None))
    counts: dict[str, int] = {}
    for (data,) in conn.execute(query):
        record = json.loads(data) if isinstance(data, str) else data
        node = (record or {}).get("remote_build_node")
        if node:
            counts[node] = counts.get(node, 0) + 1
    return counts


class RemoteNodeService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.repo = repository.remote_build_nodes

    @property
    def access(self) -> NodeAccess:
        return node_access(self.ctx)

    # --- records
    def create(self, body: Any) -> dict[str, Any]:
        fields = schemas.load_input(schemas.RemoteBuildNodeInput, body)
        _check_xname(fields["xname"])
        record = {"xname": fields["xname"], "created": format_timestamp(utcnow())}
        with self.ctx.database.write() as conn:
            # Re-registering an xname overwrites it, as the original does (201, no conflict).
            self.repo.remove(conn, record["xname"])
            self.repo.insert(conn, record)
        # A (re-)registered node's host key is trusted anew on the next contact.
        nodekeys.forget(self.ctx.database, record["xname"])
        self.access.prober.forget(record["xname"])
        return _public(record)

    def list(self) -> list[dict[str, Any]]:
        with self.ctx.database.read() as conn:
            return [_public(record) for record in self.repo.fetch(conn)]

    def get(self, xname: str) -> dict[str, Any]:
        with self.ctx.database.read() as conn:
            record = self.repo.get(conn, xname)
        if record is None:
            raise NotFound()
        return _public(record)

    def delete(self, xname: str) -> None:
        with self.ctx.database.write() as conn:
            if self.repo.get(conn, xname) is None:
                raise NotFound()
            self.repo.remove(conn, xname)
            busy = active_jobs_by_node(conn).get(xname, 0)
        self._forget_unless_busy(xname, busy)

    def delete_all(self) -> None:
        with self.ctx.database.write() as conn:
            records = self.repo.fetch(conn)
            for record in records:
                self.repo.remove(conn, record["xname"])
            busy = active_jobs_by_node(conn)
        for record in records:
            self._forget_unless_busy(record["xname"], busy.get(record["xname"], 0))

    def _forget_unless_busy(self, xname: str, busy: int) -> None:
        # Jobs still running there are watched to their end, with the node's key still checked.
        if not busy:
            nodekeys.forget(self.ctx.database, xname)
        self.access.prober.forget(xname)

    # --- IMS's key
    def public_key(self) -> dict[str, Any]:
        try:
            key = nodekeys.node_key(self.ctx.settings)
        except nodekeys.NodeKeyError as exc:
            raise Unavailable(str(exc)) from None
        return {"public_key": key.public}

    # --- live status
    def status(self, xname: str) -> dict[str, Any]:
        return asyncio.run(self.status_async(xname))

    def status_all(self) -> builtins.list[dict[str, Any]]:
        return asyncio.run(self.status_all_async())

    async def status_async(self, xname: str) -> dict[str, Any]:
        _check_xname(xname)
        await asyncio.to_thread(self.get, xname)
        return (await self.access.prober.probe(xname)).public()

    async def status_all_async(self) -> builtins.list[dict[str, Any]]:
        nodes = await asyncio.to_thread(self.list)
        statuses = await self.access.prober.probe_all([node["xname"] for node in nodes])
        return [status.public() for status in statuses]

    # --- selection
    def candidates(self, arch: str, job_type: str) -> builtins.list[NodeStatus]:
        """Ready nodes for a job of this arch and type (probed now, or from the cache). Call off the event loop."""
        xnames = [node["xname"] for node in self.list()]
        if not xnames:
            return []
        statuses = self.access.prober.probe_all_sync(xnames)
        usable = [status for status in statuses if status.ready and (job_type != "create" or status.can_create)]
        fitting = [status for status in usable if status.arch == arch]
        if not fitting:  # no native node: one that emulates the arch (qemu-user-static), else this host
            fitting = [status for status in usable if arch in status.emulated]
        if not fitting:
            log.info(
                "no remote build node fits a %s job for %s: %s",
                job_type,
                arch,
                "; ".join(f"{s.xname}: {s.arch}, {s.ssh_status} {s.tools_status}" for s in statuses),
            )
        return fitting

    def candidates_or_none(self, arch: str, job_type: str) -> builtins.list[NodeStatus]:
        """As `candidates`; a failure to probe means no node (the job runs on this host), never a failed POST."""
        try:
            return self.candidates(arch, job_type)
        except Exception:
            log.exception("remote build nodes could not be checked; the job runs on this host")
            return []

    def choose(self, conn: Connection, candidates: builtins.list[NodeStatus]) -> str | None:
        """Inside the transaction that inserts the job: the least loaded candidate, its place reserved."""
        if not candidates:
            return None
        names = [status.xname for status in candidates]
        # Serialise choices across processes (PostgreSQL); SQLite's write transaction already does.
        conn.execute(select(state_table.c.xname).where(state_table.c.xname.in_(names)).with_for_update())
        still = {record["xname"] for record in self.repo.fetch(conn)}
        ours = active_jobs_by_node(conn)
        best: tuple[int, int, str] | None = None
        for order, status in enumerate(candidates):
            if status.xname not in still:
                continue
            load = max(len(status.jobs), ours.get(status.xname, 0))
            if best is None or (load, order) < best[:2]:
                best = (load, order, status.xname)
        return best[2] if best else None
