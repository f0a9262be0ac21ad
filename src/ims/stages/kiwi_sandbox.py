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
Another architecture: with kiwi's `--target-arch` (an emulated build, see ims.stages.build) an apt.conf.d
file in the sandbox gives the host's apt-get that architecture as its only one, so kiwi's Debian bootstrap
resolves and downloads the target's packages; apt-get in the image root (chrooted, the image's own, under
qemu) reads the root's /etc/apt and is native to that architecture anyway.
Network: with IMS_JOB_NETWORK=isolated (the default where slirp4netns is installed, as for the SSH
session, see ims.stages.slirp) the sandbox has a network namespace of its own, wired out by slirp4netns
without the host's loopback: package downloads work, while the host's loopback services (the IMS API, the
embedded SeaweedFS's unauthenticated filer and volume ports) are out of reach of recipe code. kiwi's command
starts only once slirp4netns has connected the namespace (a constant shell loop waits for its tap device).
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

from ims.stages.sandbox import (
    OCI_DEFAULT_CAPS,
    Sandbox,
    SandboxError,
    SandboxProcess,
    clean_env,
    launch,
)
from ims.stages.slirp import TAP, SlirpError, SlirpNetwork, choose_isolation, host_resolv_conf

KIWI_CACHE = Path("/var/cache/kiwi")
KIWI_CAPS = (*OCI_DEFAULT_CAPS, "SYS_ADMIN")
# Passed through when the stage has them: package downloads may need a proxy.
PASS_THROUGH = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "IMS_JOB_ID")
_PATH_OPTIONS = ("--target-dir", "--description", "--logfile", "--config", "--ca-cert")
# kiwi's architecture names -> Debian's, for an emulated build's host apt-get.
DEBIAN_ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}
APT_ARCH_CONF = "/etc/apt/apt.conf.d/00ims-target-arch"
# Runs inside the sandbox before kiwi: waits (up to 20 s) for slirp4netns's tap device, then execs kiwi's
# argv, which stays positional parameters and is never part of the script.
AWAIT_NETWORK = (
    f"i=0; until grep -q '^ *{TAP}:' /proc/net/dev; do i=$((i+1)); "
    "if [ $i -gt 400 ]; then echo 'ims: the sandbox network did not come up' >&2; exit 125; fi; sleep 0.05; done; "
    'exec "$@"'
)


def isolated_network(environ: dict[str, str]) -> bool:
    """IMS_JOB_NETWORK for kiwi, decided as for sessions (ims.stages.slirp.choose_isolation)."""
    mode = environ.get("IMS_JOB_NETWORK", "").strip().lower()
    try:
        isolated, reason = choose_isolation("" if mode == "auto" else mode)
    except SlirpError as exc:
        raise SandboxError(str(exc)) from None
    if reason:
        print(
            f"ims: warning: {reason}: kiwi's sandbox shares the host's network, so recipe code can reach the "
            "host's loopback services (see docs/jobs.md; IMS_JOB_NETWORK=host accepts this without the warning)",
            file=sys.stderr,
            flush=True,
        )
    return isolated


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


def kiwi_sandbox(kiwi_argv: Sequence[str], environ: dict[str, str] | None = None, *, isolated: bool = False) -> Sandbox:
    """The sandbox for one kiwi-ng command line; its job directory is kiwi's `--target-dir`.

    `isolated`: a network namespace of its own (slirp4netns joins it once it runs) and a resolv.conf that
    names slirp4netns's DNS forwarder; kiwi copies it into the image root for its package installs.
    """
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
    box.unshare_net = isolated
    # World-readable (Sandbox.file): kiwi copies resolv.conf into the image root with its mode, where
    # apt-get's download methods run as _apt and must read it to resolve the archive's name.
    box.host_system(resolv_conf=host_resolv_conf() if isolated else None)
    box.proc().dev().dir("/sys").tmpfs("/tmp").tmpfs("/var/tmp").tmpfs("/run").tmpfs("/root")
    box.dir("/run/lock").dir("/var/lib/dpkg").dir("/var/log/apt")
    # The host's apt-get looks for these even though kiwi points Dir::Etc elsewhere; empty, so none of
    # the host's apt configuration (auth.conf.d credentials included) reaches recipe code. A proxy comes
    # through the environment (PASS_THROUGH), which kiwi turns into apt options.
    for name in ("apt.conf.d", "preferences.d", "sources.list.d", "trusted.gpg.d", "auth.conf.d", "keyrings"):
        box.dir(f"/etc/apt/{name}")
    target_arch = _option(kiwi_argv, "--target-arch")
    if target_arch is not None:
        box.file(APT_ARCH_CONF, apt_architecture_conf(str(target_arch)))
    box.python_runtime()
    kiwi = Path(shutil.which(kiwi_argv[0]) or kiwi_argv[0]).resolve()
    if not _under(kiwi, Path("/usr")) and not _under(kiwi, Path(sys.prefix)):
        # kiwi-ng installed in a virtualenv of its own (pip's usual way on a build node): its script's
        # interpreter and site-packages are that whole environment, read-only.
        venv = kiwi.parent.parent
        box.ro_bind(venv if (venv / "pyvenv.cfg").is_file() else kiwi.parent)
        base = venv_base_prefix(venv)
        if base is not None and not _under(base, Path("/usr")):
            box.ro_bind(base)  # the interpreter the virtualenv was made from (pyenv's, say)
    KIWI_CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
    box.bind(KIWI_CACHE)
    box.bind(target)
    for name in _PATH_OPTIONS[1:]:
        path = _option(kiwi_argv, name)
        if path is not None and not _under(path, target):
            raise SandboxError(f"kiwi's {name} {path} is outside the job's directory {target}")
    return box


def venv_base_prefix(venv: Path) -> Path | None:
    """The installation a virtualenv's interpreter comes from (pyvenv.cfg's `home` is its bin directory)."""
    try:
        lines = (venv / "pyvenv.cfg").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip().startswith("/"):
            return Path(value.strip()).resolve().parent
    return None


def apt_architecture_conf(target_arch: str) -> str:
    """apt configuration making kiwi's target architecture apt's native and only one."""
    debian = DEBIAN_ARCHES.get(target_arch)
    if debian is None:
        raise SandboxError(f"no Debian architecture is known for kiwi's --target-arch {target_arch!r}")
    return f'APT::Architecture "{debian}";\nAPT::Architectures {{ "{debian}"; }};\n'


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: python -m ims.stages.kiwi_sandbox -- KIWI-NG ARGS...", file=sys.stderr)
        return 2
    started: list[SandboxProcess] = []
    networks: list[SlirpNetwork] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        for sandbox in started:
            sandbox.stop(5.0)
        for network in networks:
            network.stop()
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    log = _option(argv, "--logfile")
    try:
        isolated = isolated_network(dict(os.environ))
        box = kiwi_sandbox(argv, isolated=isolated)
        command = ["/bin/sh", "-c", AWAIT_NETWORK, "sh", *argv] if isolated else argv
        started.append(launch(box, command, stdin=None, stdout=None, stderr=None))
        if isolated:
            # Only once bwrap has set up the namespace's loopback: slirp4netns configures the namespace too.
            started[0].wait_setup()
            # Its chatter stays out of the job log; a failure to connect is reported below.
            networks.append(SlirpNetwork.attach(started[0].init_pid))
    except (SandboxError, SlirpError, OSError) as exc:
        for sandbox in started:
            sandbox.stop(5.0)
        _report(log, f"kiwi's sandbox could not start: {exc}")
        return 125
    try:
        code = started[0].process.wait()
    finally:
        for network in networks:
            network.stop()
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
