"""The ssh command for a job waiting on its user: the right key, and the job's host key pinned.

Every job's sshd has fresh host keys, which the job publishes in its log (`host key: TYPE BASE64 SHA256:…`).
The CLI writes them into a known_hosts file of that job alone (`~/.cache/ims/known_hosts/<job id>`), so the
printed command connects without a prompt, checks the key, and leaves `~/.ssh/known_hosts` alone. When the
log names no key, the command accepts the first one into that file (`StrictHostKeyChecking=accept-new`).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from ims.client.follow import SshAccess

_HOST_KEY = re.compile(r"host key: (\S+) (\S+)(?: (SHA256:\S+))?")


@dataclass(frozen=True)
class HostKey:
    kind: str
    blob: str
    fingerprint: str


@dataclass(frozen=True)
class SshHint:
    command: str
    known_hosts: Path
    keys: list[HostKey]
    identity: Path | None

    def known_hosts_lines(self, access: SshAccess) -> list[str]:
        return [f"{_host_pattern(access)} {key.kind} {key.blob}" for key in self.keys]


def host_keys_from_log(text: str) -> list[HostKey]:
    """The host keys the job's sshd published; the last sshd's when there were several."""
    keys: dict[str, HostKey] = {}
    for match in _HOST_KEY.finditer(text):
        kind, blob, fingerprint = match.group(1), match.group(2), match.group(3) or ""
        keys[kind] = HostKey(kind, blob, fingerprint)
    return list(keys.values())


def ssh_dir() -> Path:
    return Path(os.environ.get("HOME") or Path.home()) / ".ssh"


def local_identity(public_key: str, directory: Path | None = None) -> Path | None:
    """The private key file in ~/.ssh whose `.pub` is the job's public key, when there is one."""
    words = public_key.split()
    if len(words) < 2:
        return None
    directory = directory or ssh_dir()
    try:
        candidates = sorted(directory.glob("*.pub"))
    except OSError:
        return None
    for pub in candidates:
        try:
            theirs = pub.read_text().split()
        except OSError:
            continue
        private = pub.with_suffix("")
        if theirs[:2] == words[:2] and private.is_file():
            return private
    return None


def known_hosts_path(job_id: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path(os.environ.get("HOME") or Path.home()) / ".cache")
    return cache / "ims" / "known_hosts" / job_id


def _host_pattern(access: SshAccess) -> str:
    return access.host if access.port == 22 else f"[{access.host}]:{access.port}"


def _display(path: Path) -> str:
    home = os.environ.get("HOME")
    text = str(path)
    if home and text.startswith(home.rstrip("/") + "/"):
        return "~/" + text[len(home.rstrip("/")) + 1 :]
    return shlex.quote(text)


def ssh_hint(job_id: str, access: SshAccess, keys: list[HostKey], public_key: str | None) -> SshHint:
    """Write the job's known_hosts file (when its keys are known) and build the command to print."""
    known = known_hosts_path(job_id)
    identity = local_identity(public_key) if public_key else None
    argv = ["ssh"]
    if identity is not None:
        argv += ["-i", _display(identity)]
    argv += ["-o", f"UserKnownHostsFile={_display(known)}"]
    known.parent.mkdir(parents=True, exist_ok=True)
    if keys:
        known.write_text("".join(f"{_host_pattern(access)} {key.kind} {key.blob}\n" for key in keys))
        argv += ["-o", "StrictHostKeyChecking=yes"]
    else:
        argv += ["-o", "StrictHostKeyChecking=accept-new"]
    argv += ["-p", str(access.port), f"root@{access.host}"]
    return SshHint(" ".join(argv), known, keys, identity)
