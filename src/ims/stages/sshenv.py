"""Customize stage 2: an SSH environment for the user (or CFS), until it says `complete` or `failed`."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from ims.stages.environment import JobEnvironment
from ims.stages.hostkeys import host_key_lines
from ims.stages.reporting import Reporter, StageError
from ims.stages.resolv import ResolvSwap
from ims.stages.signals import SignalPlaces, Verdict
from ims.stages.slirp import GUEST_DNS, SlirpError, choose_isolation, host_resolv_conf
from ims.stages.sshd import WORK_AREA, SshdFiles, SshServer, session_dir, write_keys


def _prepare_jail(image_root: Path) -> None:
    # The original chowns the image root as well: sshd refuses a jail that is not root's alone.
    os.chown(image_root, 0, 0)
    image_root.chmod(image_root.stat().st_mode & 0o755)


def signal_places(env: JobEnvironment, image_root: Path | None = None) -> SignalPlaces:
    if env.ssh_jail:
        return SignalPlaces(env.image_root_parent, image_root or env.image_root)
    # The unjailed session's /mnt/image is the work area's session directory (see sshd.session_sandbox).
    return SignalPlaces(env.image_root_parent, None, session_dir(env.image_root_parent))


def isolated_network(env: JobEnvironment, reporter: Reporter) -> bool:
    """Whether the session gets its own network (IMS_JOB_NETWORK; unset: isolated where slirp4netns is)."""
    ipv6 = ipaddress.ip_address(env.ssh_listen).version != 4
    obstacle = f"slirp4netns forwards IPv4 only and IMS_SSH_LISTEN is {env.ssh_listen}" if ipv6 else None
    try:
        isolated, reason = choose_isolation(env.job_network, obstacle)
    except SlirpError as exc:
        raise StageError(str(exc)) from None
    if reason:
        reporter.say(
            f"warning: {reason}: the SSH sandbox shares the host's network, so a session can reach the host's "
            "loopback services (see docs/jobs.md; IMS_JOB_NETWORK=host accepts this without the warning)"
        )
    return isolated


def sshenv(env: JobEnvironment, reporter: Reporter, image_root: Path | None = None) -> Verdict:
    """Serve SSH until the user's verdict; sshd is gone and the flags are cleared when this returns.

    `image_root` is the tree the session is about: the job's `image-root` unless told otherwise (a
    create job's debug shell serves kiwi's `build/image-root`).
    """
    root = image_root or env.image_root
    if not root.is_dir():
        raise StageError(f"no image root at {root}; run prepare first")
    files = SshdFiles(env.sshd_dir)
    write_keys(files, env.public_key)
    if env.ssh_jail:
        _prepare_jail(root)
    places = signal_places(env, root)
    places.clear()
    isolated = isolated_network(env, reporter)
    server = SshServer(env, files, root, env.ssh_jail, dkms=env.ssh_jail and env.dkms_enabled, isolated=isolated)
    resolv = ResolvSwap(root, files.directory, host_resolv_conf().encode() if isolated else None)
    try:
        if resolv.swap_in():
            dns = f"slirp4netns's DNS ({GUEST_DNS})" if isolated else "the host's resolv.conf"
            reporter.say(f"the image uses {dns} while the SSH environment is up")
        server.start()
        took = server.wait_ready()
        if env.ssh_jail:
            mode = f"sandboxed, jailed in {root} (seen as / in the session)"
        else:
            mode = f"sandboxed, {env.image_root_parent} seen as {WORK_AREA}"
        mode += ", own network via slirp4netns" if isolated else ", host network"
        reporter.say(f"sshd answers on {env.ssh_listen}:{env.ssh_port} after {took:.2f} s ({mode})")
        where = "/tmp" if env.ssh_jail else str(WORK_AREA)
        reporter.say(
            f"connect: ssh -p {env.ssh_port} root@{env.ssh_listen}; "
            + ("" if env.ssh_jail else f"the image is at {WORK_AREA / root.relative_to(env.image_root_parent)}; ")
            + f"when done, touch {where}/complete "
            f"(or {where}/failed to discard the changes)"
        )
        for line in host_key_lines(files.host_keys()):  # for clients to pin (stages/hostkeys.py)
            reporter.say(line)
        reporter.status("waiting_on_user")
        verdict = places.wait(env.poll_seconds, env.user_wait_limit, server.running)
        reporter.say(f"user verdict: {verdict.value}")
        if verdict in (Verdict.COMPLETE, Verdict.FAILED):
            # Sessions still connected (`touch /tmp/complete` followed by more commands, an Ansible run's
            # last tasks) get up to the grace to finish; with every client gone there is nothing to wait for.
            server.wait_sessions_closed(env.session_grace_seconds)
        if verdict is Verdict.SERVER_GONE:
            raise StageError(f"sshd exited while waiting for the user: {server.log_tail()}")
        if verdict is Verdict.TIMED_OUT:
            raise StageError(f"no complete or failed signal within {env.user_wait_limit:g} s")
        return verdict
    finally:
        server.stop()
        if not resolv.restore():
            reporter.say("the image's /etc was replaced during the session; its resolv.conf was left as it is")
        places.clear()
