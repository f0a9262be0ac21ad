"""The job sandbox seen from inside real customize sessions (stock `ssh`), as an attacker would look.

Each session, jailed or not: the IMS data dir and database are not there; /proc shows only the
session's own processes; no variable or file holds the S3 secret or a job token; another job's
authorized_keys and image root cannot be reached; `mount` fails; the capability sets are the OCI
default 14. And the unjailed session has the original's /mnt/image work area.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.jobs.kit import (
    add_image,
    add_public_key,
    delete_all_jobs,
    jobs_dir,
    post_customize,
    ssh_job,
    ssh_ok,
    ssh_signal,
    start_job_server,
    wait_status,
)
from tests.stages.kit import KeyPair
from tests.support.images import RegisteredImage, read_from_squashfs
from tests.support.servers import ImsServer

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location

pytestmark = pytest.mark.slow

# CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD
# AUDIT_WRITE SETFCAP: the OCI runtimes' default set.
OCI_CAPS_MASK = "00000000a80425fb"
# Every tool through busybox, so the same probes run in the busybox test image and in the toolbox.
B = "/bin/busybox"


def _run(api: httpx.Client, key: KeyPair, record: dict[str, Any], command: str) -> tuple[int, str]:
    result = ssh_job(key, record, command)
    assert result.returncode != 255 or "Permission denied" not in result.stderr, result.stderr
    return result.returncode, result.stdout + result.stderr


def _processes(api: httpx.Client, key: KeyPair, record: dict[str, Any]) -> list[str]:
    out = ssh_ok(api, key, record, f"for p in /proc/[0-9]*; do echo \"$p $({B} tr '\\0' ' ' < $p/cmdline)\"; done")
    return [line for line in out.splitlines() if line.strip()]


def _probe(
    server: ImsServer, api: httpx.Client, key: KeyPair, record: dict[str, Any], other: dict[str, Any], *, proc: bool
) -> None:
    data_dir = server.data_dir
    secret = server.env["S3_SECRET_KEY"]
    other_dir = jobs_dir(server) / other["id"]

    # The IMS data dir, its database, the jobs tree and the other job are simply not there.
    for path in (data_dir, data_dir / "ims.sqlite3", jobs_dir(server), other_dir / "image" / "sshd", other_dir):
        code, out = _run(api, key, record, f"{B} ls -la {path}")
        assert code != 0 and "No such file" in out, (path, out)
    # Appending this job's key to the other job's authorized_keys (the old attack) has nowhere to go.
    code, out = _run(api, key, record, f"echo ssh-ed25519 AAAA x >> {other_dir}/image/sshd/authorized_keys")
    assert code != 0, out
    # The host's secrets in /etc are not in the toolbox (nor in an image).
    code, out = _run(api, key, record, f"{B} cat /etc/shadow /etc/ssh/ssh_host_ed25519_key")
    assert code != 0, out

    # `mount` fails, and so does a raw socket on the shared host network.
    code, out = _run(api, key, record, f"{B} mkdir -p /tmp/m && {B} mount -t tmpfs none /tmp/m")
    assert code != 0, out
    code, out = _run(api, key, record, f"{B} mount -t proc proc /tmp/m")
    assert code != 0, out

    # No variable holds a secret or a token; neither does any file the session can read (outside /usr).
    env_text = ssh_ok(api, key, record, "env")
    assert secret not in env_text
    assert not re.search(r"S3_|IMS_JOB_TOKEN|imsjob_|AWS_", env_text), env_text
    code, out = _run(
        api,
        key,
        record,
        f"{B} grep -rlsF -e {secret} -e imsjob_ /etc /run /tmp /root /mnt /var /home /srv /opt 2>/dev/null; "
        f"cat /proc/[0-9]*/environ 2>/dev/null | {B} tr '\\0' '\\n' | {B} grep -cE 'S3_SECRET|IMS_JOB_TOKEN|{secret}'",
    )
    assert secret not in out.replace(f"-e {secret}", "")
    assert out.strip().splitlines()[-1] == "0", out

    if proc:
        # /proc is the sandbox's own: bwrap's init, sshd and this session; not the stage, not the server.
        listed = _processes(api, key, record)
        assert 2 <= len(listed) <= 12, listed
        joined = "\n".join(listed)
        for forbidden in ("ims.stages", "ims.jobs", "-m ims", "uvicorn", "weed"):
            assert forbidden not in joined, joined
        programs = {line.split()[1].rstrip(":").rsplit("/", 1)[-1] for line in listed}
        assert programs <= {"bwrap", "sshd", "bash", "sh", "busybox"}, listed
        assert "sshd" in programs
        status = ssh_ok(api, key, record, f"{B} grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status")
        caps = dict(line.split(":\t") for line in status.strip().splitlines())
        assert caps == {name: OCI_CAPS_MASK for name in ("CapPrm", "CapEff", "CapBnd", "CapAmb")}, caps
        # /proc/1/root leads to the sandbox's root, never the host's.
        code, out = _run(api, key, record, f"{B} ls /proc/1/root{data_dir}")
        assert code != 0, out


def _new_image_file(
    store: ArtifactStore, api: httpx.Client, record: dict[str, Any], scratch: Path, member: str
) -> bytes:
    image = api.get(f"/v3/images/{record['resultant_image_id']}").json()
    manifest = store.read_json(S3Location.parse(image["link"]["path"]))
    for artifact in manifest["artifacts"]:
        if artifact["type"].startswith("application/vnd.cray.image.rootfs.squashfs"):
            rootfs = scratch / "rootfs.sqsh"
            store.download_file(S3Location.parse(artifact["link"]["path"]), rootfs)
            return read_from_squashfs(rootfs, member, scratch)
    raise AssertionError(f"no rootfs in {manifest}")


def test_sessions_see_only_their_sandbox(
    job_server: ImsServer,
    jobs_api: httpx.Client,
    stored_image: RegisteredImage,
    artifact_store: ArtifactStore,
    job_key: KeyPair,
    key_id: str,
    tmp_path: Path,
) -> None:
    image_id = add_image(jobs_api, stored_image)
    jobs = {
        "unjailed": post_customize(jobs_api, image_id, key_id, jail=False, require_dkms=False),
        "jailed": post_customize(jobs_api, image_id, key_id, jail=True, require_dkms=False),
        "jailed-dkms": post_customize(jobs_api, image_id, key_id, jail=True, require_dkms=True),
    }
    waiting = {name: wait_status(jobs_api, job["id"], {"waiting_on_user"}) for name, job in jobs.items()}
    try:
        _probe(job_server, jobs_api, job_key, waiting["unjailed"], waiting["jailed"], proc=True)
        # Without DKMS the jail has no /proc at all; with it, the sandbox's own.
        _probe(job_server, jobs_api, job_key, waiting["jailed"], waiting["unjailed"], proc=False)
        assert ssh_ok(jobs_api, job_key, waiting["jailed"], f"{B} ls /proc | {B} wc -l").strip() == "0"
        _probe(job_server, jobs_api, job_key, waiting["jailed-dkms"], waiting["jailed"], proc=True)
        assert "kernel" in ssh_ok(jobs_api, job_key, waiting["jailed-dkms"], f"{B} ls /sys")

        # The unjailed session: the original's /mnt/image, read-only everywhere else; its own sshd files too.
        unjailed = waiting["unjailed"]
        seen = ssh_ok(
            jobs_api,
            job_key,
            unjailed,
            "echo P=$IMAGE_ROOT_PARENT; ls /mnt/image; cat /mnt/image/image-root/etc/os-release",
        )
        assert "P=/mnt/image" in seen and "image-root" in seen and 'VERSION_ID="base"' in seen
        code, out = _run(jobs_api, job_key, unjailed, "echo x >> /mnt/image/sshd/authorized_keys")
        assert code != 0 and "Read-only" in out, out
        code, out = _run(jobs_api, job_key, unjailed, "touch /usr/x || touch /etc/x || touch /x")
        assert code != 0 and "Read-only" in out, out

        ssh_signal(
            jobs_api,
            job_key,
            unjailed,
            "echo sandboxed-edit > /mnt/image/image-root/etc/motd && touch /mnt/image/complete",
        )
        done = wait_status(jobs_api, unjailed["id"], {"success"})
        assert _new_image_file(artifact_store, jobs_api, done, tmp_path, "etc/motd") == b"sandboxed-edit\n"
    finally:
        for job in jobs.values():
            jobs_api.delete(f"/v3/jobs/{job['id']}")


def test_another_jobs_key_stays_out(
    jobs_api: httpx.Client,
    stored_image: RegisteredImage,
    job_key: KeyPair,
    second_key: KeyPair,
    key_id: str,
) -> None:
    """Job A's user cannot add a key to job B's sshd: B's files are outside A's sandbox, A's own are read-only."""
    image_id = add_image(jobs_api, stored_image)
    a = post_customize(jobs_api, image_id, key_id, jail=False)
    b = post_customize(jobs_api, image_id, add_public_key(jobs_api, second_key), jail=False)
    try:
        a = wait_status(jobs_api, a["id"], {"waiting_on_user"})
        b = wait_status(jobs_api, b["id"], {"waiting_on_user"})
        # Everything A's user can write: nothing named authorized_keys is writable.
        found = ssh_ok(
            jobs_api,
            job_key,
            a,
            f"{B} find / -xdev -name authorized_keys 2>/dev/null; {B} find /mnt /run -name authorized_keys",
        )
        for path in set(found.split()):
            code, _ = _run(jobs_api, job_key, a, f"cat /dev/null >> {path}")
            assert code != 0, path
        time.sleep(0.2)
        refused = ssh_job(job_key, b, "true")
        assert refused.returncode == 255 and "Permission denied" in refused.stderr
    finally:
        for job in (a, b):
            jobs_api.delete(f"/v3/jobs/{job['id']}")


def test_a_sandbox_that_cannot_start_ends_the_job_in_error(
    work_root: Path, s3_env: dict[str, str], artifact_store: ArtifactStore, stored_image: RegisteredImage,
    job_key: KeyPair, tmp_path: Path,
) -> None:  # fmt: skip
    """A bwrap that fails (as one without user namespaces does): the job ends in `error` with bwrap's reason."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "bwrap").write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    (fake / "bwrap").chmod(0o755)
    server = start_job_server(work_root, s3_env, PATH=f"{fake}:{os.environ['PATH']}")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api:
            job = post_customize(api, add_image(api, stored_image), add_public_key(api, job_key), jail=True)
            ended = wait_status(api, job["id"], {"error"})
            reason = ended["status_reason"] or ""
            assert "sandbox could not start" in reason and "No permissions to create new namespace" in reason, reason
            assert ended["resultant_image_id"] is None
    finally:
        delete_all_jobs(server)
        server.stop()
