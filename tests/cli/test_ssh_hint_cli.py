"""`jobs create --wait` in a real terminal: the printed ssh command works as printed, with the user's own key
file (`-i`, found in ~/.ssh) and the job's host key pinned in a per-job known_hosts file (no prompt, no entry
in ~/.ssh/known_hosts)."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.cli.conftest import Cli
from tests.cli.test_jobs_cli import customize_args
from tests.stages.kit import make_keypair
from tests.support.images import build_image_root, read_from_squashfs, squash

from ims.cli.ssh_hints import host_keys_from_log, local_identity


def test_host_keys_and_identity_are_read_back(tmp_path: Path) -> None:
    log = (
        "2026-01-01T00:00:00 [+    1.0s] host key: ssh-ed25519 AAAAC3one SHA256:abc\n"
        "2026-01-01T00:00:00 [+    1.0s] host key: ecdsa-sha2-nistp256 AAAAE2two SHA256:def\n"
    )
    keys = host_keys_from_log(log)
    assert [(key.kind, key.blob, key.fingerprint) for key in keys] == [
        ("ssh-ed25519", "AAAAC3one", "SHA256:abc"),
        ("ecdsa-sha2-nistp256", "AAAAE2two", "SHA256:def"),
    ]
    pair = make_keypair(tmp_path / ".ssh", "work_key")
    make_keypair(tmp_path / ".ssh", "other")
    assert local_identity(pair.public, tmp_path / ".ssh") == pair.private
    assert local_identity("ssh-ed25519 AAAAnotmine", tmp_path / ".ssh") is None


class Terminal:
    """A process on a pseudo-terminal, as a person at a shell runs it."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self.text = ""

    def read_until(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.text)
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text}")
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    self.text += os.read(self.master, 65536).decode(errors="replace").replace("\r\n", "\n")
                except OSError:  # the process ended and closed the terminal
                    time.sleep(0.2)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        os.close(self.master)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="openssh-server is not installed")
def test_wait_prints_an_ssh_command_that_works_as_printed(cli: Cli, tmp_path: Path) -> None:
    home = tmp_path / "home"
    pair = make_keypair(home / ".ssh", "site_admin")  # not id_ed25519: plain `ssh` would not offer it
    root = build_image_root(tmp_path / "root")
    rootfs = squash(root, tmp_path / "rootfs.sqsh")
    image = cli.json(
        "images",
        "import",
        "base",
        "--rootfs",
        str(rootfs),
        "--kernel",
        str(root / "boot/initrd"),
        "--initrd",
        str(root / "boot/initrd"),
    )
    key = cli.json("public-keys", "create", "--name", "site admin", "--public-key", f"{pair.private}.pub")

    env = {k: v for k, v in os.environ.items() if k not in cli.env and not k.startswith("XDG_")}
    env.update({k: v for k, v in cli.env.items() if v is not None})
    env.update({"HOME": str(home), "TERM": "xterm", "COLUMNS": "200"})
    ims = str(Path(sys.executable).parent / "ims")
    terminal = Terminal([ims, *customize_args(image["id"], key["id"], "pinned"), "--wait", "--timeout", "300"], env)
    try:
        command = terminal.read_until(r"log in with:\s+(ssh [^\n]+)\n", 180).group(1).strip()
        terminal.read_until(r"when done:[^\n]+\n", 10)
        job_id = re.search(r"job ([0-9a-f-]{36}): waiting_on_user", terminal.text).group(1)  # type: ignore[union-attr]
        assert "-i ~/.ssh/site_admin" in command
        assert f"UserKnownHostsFile=~/.cache/ims/known_hosts/{job_id}" in command
        assert "StrictHostKeyChecking=yes" in command
        port, host = re.search(r"-p (\d+) root@(\S+)$", command).groups()  # type: ignore[union-attr]
        fingerprint = re.search(r"host key:\s+ssh-ed25519 (SHA256:\S+)", terminal.text)
        assert fingerprint, terminal.text
        assert f"or pin it:    [{host}]:{port} ssh-ed25519 AAAA" in terminal.text

        known = home / ".cache/ims/known_hosts" / job_id
        listed = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", str(known)], capture_output=True, text=True, check=True
        )
        assert fingerprint.group(1) in listed.stdout
        log = cli.ok("jobs", "logs", job_id).stdout
        assert "host key: ssh-ed25519" in log and fingerprint.group(1) in log

        # Exactly as printed (the shell expands ~), no prompt: stdin is not a terminal and the key is pinned.
        change = 'echo pinned > "$IMAGE_ROOT_PARENT/image-root/etc/motd" && touch "$IMAGE_ROOT_PARENT/complete"'
        done = subprocess.run(
            ["bash", "-c", f"{command} {shlex_quote(change)}"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert not (home / ".ssh/known_hosts").exists()

        terminal.read_until(r'"status": "success"|status\s+success', 300)
        assert terminal.process.wait(30) == 0
        new_id = re.search(r"resultant_image_id\"?:?\s+\"?([0-9a-f-]{36})", terminal.text).group(1)  # type: ignore[union-attr]
    finally:
        terminal.close()
    dest = tmp_path / "download"
    cli.json("images", "download", new_id, str(dest))
    assert read_from_squashfs(dest / "rootfs", "etc/motd", tmp_path) == b"pinned\n"
    shutil.rmtree(home, ignore_errors=True)


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
