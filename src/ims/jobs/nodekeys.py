"""IMS's own SSH key for remote build nodes, and the host keys of the nodes it trusts.

IMS's key pair is made on first use in `<data dir>/ssh/ims_remote_node_ed25519` (or read from
IMS_REMOTE_NODE_KEY); its public line goes into each node's root `authorized_keys`.

Node host keys are trusted on first use: the first successful connection records the key the node
showed (table remote_build_node_state); every later connection demands exactly that key. A node that
shows another key is marked unusable with the reason and never silently accepted; registering the node
again (POST /v3/remote-build-nodes) forgets its key, so the next contact trusts the new one.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, insert, select, update

from ims.domain.timeutil import utcnow
from ims.settings import Settings
from ims.store.db import Database
from ims.store.tables import remote_build_node_state as state_table

log = logging.getLogger(__name__)

KEY_NAME = "ims_remote_node_ed25519"


class NodeKeyError(RuntimeError):
    pass


@dataclass(frozen=True)
class NodeKey:
    private: Path
    public: str  # one authorized_keys line


def ssh_dir(settings: Settings) -> Path:
    return Path(os.path.abspath(settings.data_dir)) / "ssh"


def node_key(settings: Settings) -> NodeKey:
    """IMS's key pair for the nodes; made (once, safely against concurrent starts) when missing."""
    if settings.remote_node_key is not None:
        private = Path(settings.remote_node_key)
        if not private.exists():
            raise NodeKeyError(f"IMS_REMOTE_NODE_KEY {private} does not exist")
    else:
        private = ssh_dir(settings) / KEY_NAME
        if not private.exists():
            _make_key(private)
    return NodeKey(private, _public_line(private))


def _make_key(private: Path) -> None:
    private.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=private.parent) as scratch:
        made = Path(scratch) / KEY_NAME
        comment = f"ims@{socket.gethostname()}"
        try:
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(made)],
                check=True,
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise NodeKeyError(f"could not make IMS's node key with ssh-keygen: {exc}") from exc
        # The public half first: whoever sees the private key may rely on its .pub being there.
        os.replace(made.with_name(KEY_NAME + ".pub"), private.with_name(private.name + ".pub.new"))
        try:
            os.link(made, private)  # fails when another process made the key meanwhile: theirs wins
        except FileExistsError:
            os.unlink(private.with_name(private.name + ".pub.new"))
            return
        os.replace(private.with_name(private.name + ".pub.new"), private.with_name(private.name + ".pub"))


def _public_line(private: Path) -> str:
    public = private.with_name(private.name + ".pub")
    if public.exists():
        return public.read_text().strip()
    try:
        out = subprocess.run(["ssh-keygen", "-y", "-f", str(private)], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NodeKeyError(f"could not read the public half of {private}: {exc}") from exc
    return out.stdout.decode().strip()


# --- host keys and usability, per node
@dataclass(frozen=True)
class NodeTrust:
    host_keys: str | None  # known_hosts lines; None before the first contact
    unusable_reason: str | None


def trust(database: Database, xname: str) -> NodeTrust:
    with database.read() as conn:
        row = conn.execute(
            select(state_table.c.host_keys, state_table.c.unusable_reason).where(state_table.c.xname == xname)
        ).first()
    if row is None:
        return NodeTrust(None, None)
    return NodeTrust(row.host_keys, row.unusable_reason)


def _upsert(database: Database, xname: str, **values: str | None) -> None:
    with database.write() as conn:
        exists = conn.execute(select(state_table.c.xname).where(state_table.c.xname == xname)).first()
        if exists is None:
            conn.execute(insert(state_table).values(xname=xname, updated=utcnow(), **values))
        else:
            conn.execute(update(state_table).where(state_table.c.xname == xname).values(updated=utcnow(), **values))


def remember_host_keys(database: Database, xname: str, lines: str) -> None:
    """First contact: keep the key the node showed (only if none is kept yet: the first one wins)."""
    with database.write() as conn:
        row = conn.execute(select(state_table.c.host_keys).where(state_table.c.xname == xname)).first()
        if row is not None and row.host_keys:
            return
    _upsert(database, xname, host_keys=lines)


def mark_unusable(database: Database, xname: str, reason: str) -> None:
    _upsert(database, xname, unusable_reason=reason)


def forget(database: Database, xname: str) -> None:
    """The node was registered again or removed: its key is trusted anew on the next contact."""
    with database.write() as conn:
        conn.execute(delete(state_table).where(state_table.c.xname == xname))


def ensure_node_key(settings: Settings) -> None:
    """At start-up: make the key if needed, so `ims remote-build-nodes public-key` has it from the start."""
    try:
        node_key(settings)
    except NodeKeyError as exc:
        log.warning("remote build nodes cannot be used: %s", exc)
