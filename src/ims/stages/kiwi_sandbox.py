"""`python -m ims.stages.kiwi_sandbox -- KIWI ARGS...`: run kiwi-ng in the job's bubblewrap sandbox.

kiwi and everything it runs (host apt-get and dpkg, the packages' maintainer scripts, the recipe's
config.sh and images.sh) see only:
- the host's /usr and a few /etc files read-only (kiwi uses the host's apt-get, gpgv and keyrings in
  /usr/share/keyrings), this Python and its environment read-only;
- the job's directory (kiwi's `--target-dir`, holding the recipe, the log and the build root) read-write,
  at its host path so kiwi's result record names real files;
- kiwi's package cache `/var/cache/kiwi` read-write (shared by builds; the stage serialises them);
- a private /proc, a minimal /dev, an empty /sys, private tmpfs /tmp, /var/tmp, /run and /root; the
  root tmpfs stays writable, so kiwi's keyring in /etc/apt/keyrings and its /var/lib/dpkg/status.kiwi
  land there and vanish with the sandbox instead of touching the host.
Capabilities: the OCI default set plus CAP_SYS_ADMIN, all in the sandbox's own user namespace (see
ims.stages.sandbox): kiwi bind-mounts /proc, /dev and /sys into the image root and mounts tmpfs, which
works there, while host-level mounts (a block device, devtmpfs, sysfs) and device nodes do not. Loop
devices are out of reach; the build types IMS takes (tbz, kis) need none.

This wrapper is the process the build stage streams and kills: it starts bwrap (`--die-with-parent`), so
killing it takes the whole sandbox down, and it exits with kiwi's status.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from ims.stages.sandbox import OCI_DEFAULT_CAPS, Sandbox, SandboxError, SandboxProcess, clean_env, launch

KIWI_CACHE = Path("/var/cache/kiwi")
KIWI_CAPS = (*OCI_DEFAULT_CAPS, "SYS_ADMIN")
# Passed through when the stage has them: package downloads may need a proxy.
PASS_THROUGH = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "IMS_JOB_ID")
_PATH_OPTIONS = ("--target-dir", "--description", "--logfile", "--config", "--ca-cert")


def _option(argv: Sequence[str], name: str) -> Path | None:
    for index, item in enumerate(argv):
        if item == name and index + 1 < len(argv):
            return Path(argv[index + 1])
        if item.startswith(name + "="):
            return Path(item.split("=", 1)[1])
    return None


def _under(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def kiwi_sandbox(kiwi_argv: Sequence[str], environ: dict[str, str] | None = None) -> Sandbox:
    """The sandbox for one kiwi-ng command line; its job directory is kiwi's `--target-dir`."""
    environ = dict(os.environ if environ is None else environ)
    target = _option(kiwi_argv, "--target-dir")
    if target is None:
        raise SandboxError("kiwi's command line has no --target-dir: nothing to bind as the job's directory")
    target = target.resolve()
    box = Sandbox(
        env=clean_env({name: environ[name] for name in PASS_THROUGH if environ.get(name)}),
        caps=KIWI_CAPS,
        chdir=str(target),
    )
    # Scratch places first: a later bind (this Python under /root/.pyenv, say) may sit inside one.
    box.host_system().proc().dev().dir("/sys").tmpfs("/tmp").tmpfs("/var/tmp").tmpfs("/run").tmpfs("/root")
    box.dir("/run/lock").dir("/var/lib/dpkg").dir("/var/log/apt")
    # The host's apt-get looks for these even though kiwi points Dir::Etc elsewhere; empty, so none of
    # the host's apt configuration (auth.conf.d credentials included) reaches recipe code. A proxy comes
    # through the environment (PASS_THROUGH), which kiwi turns into apt options.
    for name in ("apt.conf.d", "preferences.d", "sources.list.d", "trusted.gpg.d", "auth.conf.d", "keyrings"):
        box.dir(f"/etc/apt/{name}")
    box.python_runtime()
    kiwi = Path(shutil.which(kiwi_argv[0]) or kiwi_argv[0]).resolve()
    if not _under(kiwi, Path("/usr")) and not _under(kiwi, Path(sys.prefix)):
        box.ro_bind(kiwi.parent)
    KIWI_CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
    box.bind(KIWI_CACHE)
    box.bind(target)
    for name in _PATH_OPTIONS[1:]:
        path = _option(kiwi_argv, name)
        if path is not None and not _under(path, target):
            raise SandboxError(f"kiwi's {name} {path} is outside the job's directory {target}")
    return box


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: python -m ims.stages.kiwi_sandbox -- KIWI-NG ARGS...", file=sys.stderr)
        return 2
    started: list[SandboxProcess] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        for sandbox in started:
            sandbox.stop(5.0)
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    log = _option(argv, "--logfile")
    try:
        box = kiwi_sandbox(argv)
        started.append(launch(box, argv, stdin=None, stdout=None, stderr=None))
    except SandboxError as exc:
        _report(log, f"kiwi's sandbox could not start: {exc}")
        return 125
    code = started[0].process.wait()
    target = _option(argv, "--target-dir")
    escapes = outside_links(target) if target is not None else []
    if escapes:
        # Recipe code may have left links the stage would follow as root on the host (the build root, an
        # artifact, kiwi's result record): the build is refused, nothing of it is used.
        _report(log, "the build left links out of the job's directory: " + ", ".join(escapes[:5]))
        return 126
    if code != 0 and log is not None and not (log.is_file() and log.stat().st_size):
        # bwrap failed while setting the sandbox up (its message is in the job log), or kiwi died at once.
        _report(
            log, f"kiwi's sandbox ended with {code} before kiwi-ng wrote its log (bwrap's message is in the job log)"
        )
    return 128 - code if code < 0 else code


def outside_links(target: Path) -> list[str]:
    """What in the job's directory the stage reads after kiwi and that leads out of it.

    The entries of the directory and of `build/` (the build root among them) may not be links that leave
    it, and every file kiwi's result record names must be inside it.
    """
    target = target.resolve()
    found: list[str] = []
    for directory in (target, target / "build"):
        if directory.is_symlink() or not directory.is_dir():
            if directory.is_symlink():
                found.append(str(directory))
            continue
        for entry in directory.iterdir():
            if entry.is_symlink() and not _under(entry, target):
                found.append(str(entry))
    record = target / "kiwi.result.json"
    if record.is_file() and not record.is_symlink():
        try:
            entries = json.loads(record.read_text())
        except ValueError:
            entries = {}
        for entry in entries.values() if isinstance(entries, dict) else []:
            name = entry.get("filename") if isinstance(entry, dict) else None
            if isinstance(name, str) and name and not _under(target / name, target):
                found.append(name)
    return found


def _report(log: Path | None, message: str) -> None:
    """Say it on stderr (the job log) and as an error line of kiwi's own log, where the stage takes its reason."""
    print(f"ims: {message}", file=sys.stderr, flush=True)
    if log is not None:
        with contextlib.suppress(OSError), log.open("a") as out:
            out.write(f"[ ERROR   ]: {time.strftime('%H:%M:%S')} | {message}\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
