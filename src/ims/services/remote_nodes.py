"""Remote build nodes: registration records (live status checks come with the remote-node runner)."""

from __future__ import annotations

import builtins
from typing import Any

from ims.domain import schemas
from ims.domain.errors import NotFound
from ims.domain.timeutil import format_timestamp, utcnow
from ims.services.context import ServiceContext
from ims.store import repository

UNKNOWN_STATUS = {
    "sshStatus": "Unknown",
    "podmanStatus": "Unknown",
    "nodeArch": "Unknown",
    "numCurrentJobs": -1,
    "ableToRunJobs": False,
}


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {"xname": record["xname"]}


class RemoteNodeService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.repo = repository.remote_build_nodes

    def create(self, body: Any) -> dict[str, Any]:
        fields = schemas.load_input(schemas.RemoteBuildNodeInput(), body)
        record = {"xname": fields["xname"], "created": format_timestamp(utcnow())}
        with self.ctx.database.write() as conn:
            # Re-registering an xname overwrites it, as the original does (201, no conflict).
            self.repo.remove(conn, record["xname"])
            self.repo.insert(conn, record)
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

    def delete_all(self) -> None:
        with self.ctx.database.write() as conn:
            for record in self.repo.fetch(conn):
                self.repo.remove(conn, record["xname"])

    def status(self, xname: str) -> dict[str, Any]:
        return {"xname": self.get(xname)["xname"], **UNKNOWN_STATUS}

    def status_all(self) -> builtins.list[dict[str, Any]]:
        return [{"xname": node["xname"], **UNKNOWN_STATUS} for node in self.list()]
