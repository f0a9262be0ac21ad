"""CFS drives customize jobs with Ansible: a real `ansible-playbook` against a jailed, sandboxed session.

Modules run with the image's own python3 (inside the jail), files go over sftp. The image is a Debian
minbase root with python3, made once with debootstrap from the archive this machine's apt uses and cached
under /var/cache/ims-test (first run: a minute or two; later runs reuse it).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests.jobs.kit import add_image, post_customize, ssh_signal, wait_status
from tests.stages.kit import KeyPair, LocalImage
from tests.support.images import KERNEL_VERSION, read_from_squashfs, register_in_s3, squash

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location
from ims.stages.apt_sources import debian_archive_uri

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("debootstrap") is None, reason="debootstrap is not installed"),
]

CACHE = Path(os.environ.get("IMS_TEST_CACHE", "/var/cache/ims-test"))
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
PLAYBOOK = """
- hosts: image
  gather_facts: true
  tasks:
    - name: a file from the controller, over sftp
      ansible.builtin.copy:
        content: "written by ansible\\n"
        dest: /etc/ims-ansible.txt
        mode: "0644"
    - name: edit a file in place
      ansible.builtin.lineinfile:
        path: /etc/motd
        line: "customized by CFS"
        create: true
    - name: run the image's python3
      ansible.builtin.command: python3 -c "import sys; print(sys.version_info[0])"
      register: python
      changed_when: false
    - name: the facts come from the image, not the host
      ansible.builtin.copy:
        content: "{{ ansible_facts['distribution'] }} {{ ansible_facts['distribution_major_version'] }} py{{ python.stdout }}\\n"
        dest: /root/facts.txt
        mode: "0600"
"""


def _python_image() -> LocalImage:
    """A Debian bookworm minbase root with python3 and stand-in boot files, and its squashfs (cached)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    root = CACHE / "bookworm-minbase-python3"
    archive = CACHE / "bookworm-minbase-python3.sqsh"
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not archive.is_file():
            building = CACHE / f"building-{os.getpid()}"
            shutil.rmtree(building, ignore_errors=True)
            subprocess.run(
                ["debootstrap", "--variant=minbase", "--include=python3", "bookworm", str(building),
                 debian_archive_uri()],
                check=True,
                capture_output=True,
                timeout=1200,
            )  # fmt: skip
            boot = building / "boot"
            boot.mkdir(exist_ok=True)
            (boot / f"vmlinuz-{KERNEL_VERSION}").write_bytes(b"KERNEL " + os.urandom(64 * 1024))
            (boot / "vmlinuz").symlink_to(f"vmlinuz-{KERNEL_VERSION}")
            (boot / "initrd").write_bytes(b"INITRD " + os.urandom(64 * 1024))
            (boot / "kernel-parameters").write_text("console=ttyS0\n")
            shutil.rmtree(building / "var" / "cache" / "apt" / "archives", ignore_errors=True)
            shutil.rmtree(root, ignore_errors=True)
            building.rename(root)
            squash(root, archive.with_suffix(".tmp"), compressor="zstd")
            archive.with_suffix(".tmp").rename(archive)
    return LocalImage(root, archive)


def test_ansible_playbook_customizes_a_jailed_image(
    jobs_api: httpx.Client,
    artifact_store: ArtifactStore,
    job_key: KeyPair,
    key_id: str,
    tmp_path: Path,
) -> None:
    image = _python_image()
    stored = register_in_s3(artifact_store, image.root, image.archive)
    job = post_customize(jobs_api, add_image(jobs_api, stored), key_id, jail=True)
    waiting = wait_status(jobs_api, job["id"], {"waiting_on_user"}, timeout=300)
    info = waiting["ssh_containers"][0]["connection_info"]["cluster.local"]  # what CFS uses

    (tmp_path / "playbook.yml").write_text(PLAYBOOK)
    (tmp_path / "inventory.ini").write_text(
        f"[image]\ntarget ansible_host={info['host']} ansible_port={info['port']} ansible_user=root "
        f"ansible_ssh_private_key_file={job_key.private} ansible_python_interpreter=/usr/bin/python3\n"
    )
    env = {
        **os.environ,
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_SSH_ARGS": "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o IdentitiesOnly=yes",
        "ANSIBLE_REMOTE_TMP": "/tmp/.ansible-tmp",  # not left in the image's /root
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_SSH_TRANSFER_METHOD": "sftp",
    }
    start = time.monotonic()
    played = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(tmp_path / "inventory.ini"), str(tmp_path / "playbook.yml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    print(f"TIMING ansible-playbook against a jailed session: {time.monotonic() - start:.1f} s")
    assert played.returncode == 0, played.stdout[-4000:] + played.stderr[-2000:]
    assert "failed=0" in played.stdout and "unreachable=0" in played.stdout, played.stdout

    ssh_signal(jobs_api, job_key, waiting, "rm -rf /tmp/.ansible-tmp; touch /tmp/complete")
    done = wait_status(jobs_api, job["id"], {"success"}, timeout=300)

    image_record = jobs_api.get(f"/v3/images/{done['resultant_image_id']}").json()
    manifest = artifact_store.read_json(S3Location.parse(image_record["link"]["path"]))
    rootfs = next(a for a in manifest["artifacts"] if a["type"].startswith("application/vnd.cray.image.rootfs"))
    archive = tmp_path / "rootfs.sqsh"
    artifact_store.download_file(S3Location.parse(rootfs["link"]["path"]), archive)
    assert read_from_squashfs(archive, "etc/ims-ansible.txt", tmp_path) == b"written by ansible\n"
    assert b"customized by CFS" in read_from_squashfs(archive, "etc/motd", tmp_path)
    assert read_from_squashfs(archive, "root/facts.txt", tmp_path) == b"Debian 12 py3\n"
