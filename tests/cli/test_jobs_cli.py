"""`ims jobs`: create, list, describe, logs, delete filters, and `--wait` following a job to its end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.cli.conftest import Cli, ids
from tests.stages.kit import KeyPair, make_keypair, ssh
from tests.support.images import KERNEL_VERSION, build_image_root, read_from_squashfs, squash
from tests.support.servers import ImsServer

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import link_location


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_keypair(tmp_path_factory.mktemp("keys"), "user")


def register_key(cli: Cli, key: KeyPair, tmp_path: Path) -> str:
    public = tmp_path / "user.pub"
    public.write_text(key.public)
    return str(cli.json("public-keys", "create", "--name", "cli test key", "--public-key", str(public))["id"])


def broken_image(cli: Cli, tmp_path: Path) -> str:
    """An image whose rootfs is not a squashfs: a customize job of it fails fast in `prepare`."""
    files = {}
    for name in ("rootfs", "kernel", "initrd"):
        files[name] = tmp_path / name
        files[name].write_bytes(os.urandom(4096))
    image = cli.json("images", "import", "broken", "--rootfs", str(files["rootfs"]), "--kernel",
                     str(files["kernel"]), "--initrd", str(files["initrd"]))
    return str(image["id"])


def customize_args(image_id: str, key_id: str, name: str = "out") -> list[str]:
    return ["jobs", "create", "--job-type", "customize", "--artifact-id", image_id, "--public-key-id", key_id,
            "--image-root-archive-name", name]


def test_failing_job_with_wait_exits_1_and_shows_its_log(cli: Cli, key_pair: KeyPair, tmp_path: Path) -> None:
    key_id = register_key(cli, key_pair, tmp_path)
    image_id = broken_image(cli, tmp_path)
    result = cli(*customize_args(image_id, key_id), "--wait", "--timeout", "120", "--format", "json")
    assert result.exit_code == 1, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "error" and job["job_type"] == "customize"
    assert f"job {job['id']}: creating" in result.stderr or f"job {job['id']}: fetching_image" in result.stderr
    assert f"job {job['id']}: error" in result.stderr
    assert "stage prepare" in result.stderr  # the job's own log, streamed while waiting

    listed = cli.json("jobs", "list", "--status", "error", "--job-type", "customize")
    assert job["id"] in ids(listed)
    assert job["id"] not in ids(cli.json("jobs", "list", "--status", "success"))
    assert cli.json("jobs", "describe", job["id"])["status"] == "error"
    table = cli.ok("jobs", "list").stdout
    assert table.splitlines()[0].split()[:3] == ["ID", "JOB_TYPE", "STATUS"]
    log = cli.ok("jobs", "logs", job["id"]).stdout
    assert "stage prepare" in log
    waited = cli("jobs", "wait", job["id"], "--no-logs", "--format", "json")
    assert waited.exit_code == 1 and json.loads(waited.stdout)["id"] == job["id"]

    cli.ok("jobs", "delete", job["id"])
    assert cli("jobs", "describe", job["id"]).exit_code == 1


def test_job_create_without_wait_and_deleteall_filters(
    cli: Cli, fresh_ims_server: ImsServer, key_pair: KeyPair, tmp_path: Path
) -> None:
    fresh = cli.against(fresh_ims_server)
    key_id = register_key(fresh, key_pair, tmp_path)
    image_id = broken_image(fresh, tmp_path)
    first = fresh.json(*customize_args(image_id, key_id, "a"))
    assert first["status"] == "creating" and first["ssh_containers"][0]["jail"] is False
    jailed = fresh.json(*customize_args(image_id, key_id, "b"), "--ssh-containers-jail", "True")
    assert jailed["ssh_containers"][0]["jail"] is True
    for job in (first, jailed):
        fresh("jobs", "wait", job["id"], "--no-logs", "--timeout", "120")
    fresh.ok("jobs", "deleteall", "--status", "success", "--job-type", "customize")
    assert len(fresh.json("jobs", "list")) == 2
    fresh.ok("jobs", "deleteall", "--status", "error", "--status", "success", "--job-type", "create")
    assert len(fresh.json("jobs", "list")) == 2
    fresh.ok("jobs", "deleteall", "--status", "ERROR", "--age", "0m")
    assert fresh.json("jobs", "list") == []


def test_create_job_with_an_unknown_recipe_is_one_line(cli: Cli, key_pair: KeyPair, tmp_path: Path) -> None:
    key_id = register_key(cli, key_pair, tmp_path)
    result = cli("jobs", "create", "--job-type", "create", "--artifact-id", "7c9ba3fa-3a43-4dbf-9bd5-04b1ca3aa9ec",
                 "--public-key-id", key_id, "--image-root-archive-name", "x", "--enable-debug", "False")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("ims: 400 Bad Request (POST /v3/jobs): Invalid artifact_id value")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="openssh-server is not installed")
def test_customize_with_wait_prints_the_ssh_command_and_ends_with_the_new_image(
    ims_server: ImsServer, cli: Cli, key_pair: KeyPair, artifact_store: ArtifactStore, tmp_path: Path
) -> None:
    """The whole manual customization: import, `jobs create --wait`, SSH in as told, finish, download."""
    root = build_image_root(tmp_path / "root")
    rootfs = squash(root, tmp_path / "rootfs.sqsh")
    image = cli.json("images", "import", "base", "--rootfs", str(rootfs), "--kernel", str(root / "boot" / f"vmlinuz-{KERNEL_VERSION}"),
                     "--initrd", str(root / "boot" / "initrd"))
    key_id = register_key(cli, key_pair, tmp_path)

    env = {key: value for key, value in os.environ.items() if key not in cli.env}
    env.update({key: value for key, value in cli.env.items() if value is not None})
    args = [sys.executable, "-m", "ims", *customize_args(image["id"], key_id, "customized"), "--wait",
            "--timeout", "300", "--format", "json"]
    with subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None and process.stdout is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            match = re.search(r"log in with:\s+ssh .*-p (\d+) root@(\S+)", line)
            if match:
                break
        else:
            raise AssertionError("no SSH command was printed:\n" + "".join(seen))
        port, host = int(match.group(1)), match.group(2)
        hint = process.stderr.readline()
        while hint.startswith("or pin it:"):
            hint = process.stderr.readline()
        assert 'touch "$IMAGE_ROOT_PARENT/complete"' in hint
        # Unjailed, the session is on the job's host: the image is under $IMAGE_ROOT_PARENT/image-root.
        change = 'echo customized-by-cli > "$IMAGE_ROOT_PARENT/image-root/etc/motd" && touch "$IMAGE_ROOT_PARENT/complete"'
        done = ssh(key_pair, port, change, host=host)
        assert done.returncode == 0, done.stderr
        out, rest = process.communicate(timeout=300)
    assert process.returncode == 0, "".join(seen) + rest
    job = json.loads(out)
    assert job["status"] == "success" and job["resultant_image_id"]

    dest = tmp_path / "download"
    rows = cli.json("images", "download", job["resultant_image_id"], str(dest))
    assert all(row["verified"] for row in rows)
    assert read_from_squashfs(dest / "rootfs", "etc/motd", tmp_path) == b"customized-by-cli\n"
    new_image = cli.json("images", "describe", job["resultant_image_id"])
    assert new_image["name"] == "customized"
    assert artifact_store.head(link_location(new_image["link"])) is not None
