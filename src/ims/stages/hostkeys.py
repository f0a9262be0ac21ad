"""The job's SSH host keys, published in the job log so a client can pin them instead of trusting on first use.

Every job's sshd has new host keys. The log line is stable for clients to read:

    host key: ssh-ed25519 AAAAC3Nz... SHA256:3q2+7w...

(`ims jobs create --wait` reads it and writes a per-job known_hosts file; see docs/cli.md.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

PREFIX = "host key: "


def host_key_lines(keys: list[Path]) -> list[str]:
    """One `host key: TYPE BASE64 FINGERPRINT` line per public host key that exists."""
    lines = []
    for key in keys:
        public = key.with_name(key.name + ".pub")
        if not public.is_file():
            continue
        kind, blob, *_ = public.read_text().split()
        listed = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", str(public)], capture_output=True, text=True, check=False
        )
        fingerprint = next((word for word in listed.stdout.split() if word.startswith("SHA256:")), "")
        lines.append(f"{PREFIX}{kind} {blob} {fingerprint}".rstrip())
    return lines
