"""Create jobs end to end, as root: a shipped recipe uploaded with the client -> POST /v3/jobs ->
the LocalRunner's `python -m ims.stages create` -> real kiwi-ng -> a new image in S3.

One real successful build only (several minutes on 2 cores); the failure paths fail in kiwi's
bootstrap or package phase, which takes seconds to a minute.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.jobs.kit import add_public_key, jobs_dir, logs, processes_of, ssh_ok, ssh_signal, wait_gone, wait_status
from tests.stages.kit import KeyPair, LocalImage, wait_for
from tests.support.images import list_squashfs, md5_of, read_from_squashfs
from tests.support.servers import ImsServer, start_ims_server

import ims
from ims.artifacts.s3 import ArtifactStore
from ims.client.http import ImsClient
from ims.client.recipes import upload_recipe
from ims.client.resources import Ims
from ims.domain.links import S3Location
from ims.stages.apt_sources import debian_archive_uri
from ims.stages.build import BuildResult
from ims.stages.create import package_build
from ims.stages.customize import make_client
from ims.stages.environment import JobEnvironment
from ims.stages.reporting import Reporter
from ims.store import job_tokens
from ims.store.db import Database

RECIPES = Path(ims.__file__).parent / "recipes"
# The recipe of the one real build (IMS_TEST_CREATE_RECIPE picks the other one for a measurement by hand),
# and the packages its root must hold.
BUILT_RECIPE = os.environ.get("IMS_TEST_CREATE_RECIPE", "debian-bookworm-tbz")
PACKAGES = {
    "debian-bookworm": ("openssh-server", "linux-image-amd64", "systemd-sysv", "dracut"),
    "debian-bookworm-tbz": ("linux-image-amd64", "initramfs-tools", "systemd-sysv"),
}
BUILD_TIMEOUT = 1500.0
MISSING_PACKAGE = "ims-no-such-package"
_STATUS_LINE = re.compile(r"job status -> ([a-z_]+)")


@pytest.fixture(scope="module")
def ims_client(job_server: ImsServer) -> Iterator[Ims]:
    with Ims(ImsClient(job_server.url)) as client:
        yield client


def _upload(ims_client: Ims, store: ArtifactStore, source: Path, recipe_type: str = "kiwi-ng") -> str:
    result = upload_recipe(
        ims_client,
        store,
        name=f"{source.name}-{uuid.uuid4().hex[:6]}",
        source=source,
        linux_distribution="debian12",
        recipe_type=recipe_type,
        template_dictionary={"debian_mirror": debian_archive_uri()},
    )
    return str(result.recipe["id"])


def _broken_recipe(scratch: Path, section: str) -> Path:
    """The tbz recipe asking for a package that does not exist, in its `bootstrap` or `image` list."""
    broken = scratch / f"broken-{section}"
    shutil.copytree(RECIPES / "debian-bookworm-tbz", broken)
    config = broken / "config.xml"
    anchor = '<package name="ca-certificates"/>' if section == "bootstrap" else '<package name="systemd-sysv"/>'
    text = config.read_text()
    assert anchor in text
    config.write_text(text.replace(anchor, f'{anchor}<package name="{MISSING_PACKAGE}"/>'))
    return broken


def _post_create(api: httpx.Client, recipe_id: str, key_id: str, **extra: Any) -> dict[str, Any]:
    body = {
        "job_type": "create",
        "artifact_id": recipe_id,
        "public_key_id": key_id,
        "image_root_archive_name": f"created-{uuid.uuid4().hex[:6]}",
        **extra,
    }
    response = api.post("/v3/jobs", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _statuses(api: httpx.Client, job_id: str) -> list[str]:
    """The statuses the job's stages set, in order, as their log tells it."""
    return _STATUS_LINE.findall(logs(api, job_id))


def _status_timings(api: httpx.Client, job_id: str) -> str:
    """`status N s` for each status the job went through: the time until the next one."""
    marks = [
        (float(seconds), status)
        for seconds, status in re.findall(r"\[\+\s*([0-9.]+)s\] job status -> ([a-z_]+)", logs(api, job_id))
    ]
    return ", ".join(f"{status} {after - at:.1f} s" for (at, status), (after, _) in zip(marks, marks[1:]))


def _images(api: httpx.Client) -> set[str]:
    return {image["id"] for image in api.get("/v3/images").json()}


# --- boot artifact checks -----------------------------------------------------------------------------------


def _cpio_names(data: bytes) -> tuple[list[str], int]:
    """Member names of a newc cpio archive at the start of `data`, and the offset just past it."""
    names: list[str] = []
    offset = 0
    while data[offset : offset + 6] in (b"070701", b"070702"):
        header = data[offset : offset + 110]
        size, name_size = int(header[54:62], 16), int(header[94:102], 16)
        name = data[offset + 110 : offset + 110 + name_size - 1].decode(errors="replace")
        offset += (110 + name_size + 3) & ~3
        offset += (size + 3) & ~3
        if name == "TRAILER!!!":
            break
        names.append(name)
    return names, offset


def _decompress(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    raise AssertionError(f"unknown initrd compression, magic {data[:6]!r}")


def initrd_members(path: Path) -> list[str]:
    """Names in an initrd: an optional uncompressed early cpio (microcode), then the compressed main one."""
    data = path.read_bytes()
    names, offset = _cpio_names(data)
    rest = data[offset:].lstrip(b"\0")
    if rest:
        main, _ = _cpio_names(_decompress(rest))
        names += main
    return names


def _check_manifest(store: ArtifactStore, image: dict[str, Any], scratch: Path) -> dict[str, Path]:
    """Every artifact: present, etag and md5 as S3 has them; downloaded and md5-checked. Returns kind -> file."""
    manifest = store.read_json(S3Location.parse(image["link"]["path"]))
    assert manifest["version"] == "1.0"
    files: dict[str, Path] = {}
    for artifact in manifest["artifacts"]:
        location = S3Location.parse(artifact["link"]["path"])
        assert location.key.startswith(f"{image['id']}/"), location
        head = store.head(location)
        assert head is not None, location
        assert artifact["link"]["etag"] == head.etag
        assert artifact["md5"] == head.metadata["md5sum"]
        assert head.metadata["x-shasta-ims-image-id"] == image["id"]
        kind = location.key.rsplit("/", 1)[1]
        files[kind] = scratch / kind
        store.download_file(location, files[kind])
        assert md5_of(files[kind]) == artifact["md5"]
    assert {"rootfs", "kernel", "initrd"} <= set(files), files
    return files


# --- tests --------------------------------------------------------------------------------------------------


def test_packer_recipe_is_refused(
    jobs_api: httpx.Client, ims_client: Ims, artifact_store: ArtifactStore, key_id: str
) -> None:
    recipe_id = _upload(ims_client, artifact_store, RECIPES / BUILT_RECIPE, recipe_type="packer")
    response = jobs_api.post(
        "/v3/jobs",
        json={"job_type": "create", "artifact_id": recipe_id, "public_key_id": key_id, "image_root_archive_name": "x"},
    )
    assert response.status_code == 400, response.text
    assert "packer" in response.json()["detail"]


def test_kis_artifacts_are_published_as_kiwi_made_them(
    work_root: Path,
    s3_env: dict[str, str],
    artifact_store: ArtifactStore,
    base_image: LocalImage,
    job_key: KeyPair,
    tmp_path: Path,
) -> None:
    """The kis branch of packaging, on a server whose workers are off: the job is ours to play."""
    server = start_ims_server(work_root / f"ims-kis-{uuid.uuid4().hex[:6]}", s3_env, {"IMS_RUN_WORKERS": "false"})
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api, Ims(ImsClient(server.url)) as client:
            recipe_id = _upload(client, artifact_store, RECIPES / "debian-bookworm")
            job = _post_create(api, recipe_id, add_public_key(api, job_key))
            parent = tmp_path / "image"
            parent.mkdir()
            # What the worker does at launch: mint the job's token; the stage has nothing else.
            database = Database(f"sqlite:///{server.data_dir / 'ims.sqlite3'}")
            try:
                with database.write() as conn:
                    token = job_tokens.issue(conn, job["id"])
            finally:
                database.dispose()
            assert token is not None
            env = JobEnvironment.from_env(
                {
                    "IMS_JOB_ID": job["id"],
                    "IMAGE_ROOT_PARENT": str(parent),
                    "IMAGE_ROOT_ARCHIVE_NAME": job["image_root_archive_name"],
                    "IMS_URL": server.url,
                    "IMS_JOB_TOKEN": token,
                    "BUILD_ARCH": job["arch"],
                }
            )
            boot = base_image.root / "boot"
            kernel = boot / "vmlinuz-6.1.0-ims-test"
            built = BuildResult(
                "kis",
                parent / "kiwi.log",
                1.0,
                kernel=kernel,
                initrd=boot / "initrd",
                rootfs=base_image.archive,
            )
            out = io.StringIO()
            stage_client = make_client(env)
            assert stage_client is not None
            with stage_client:
                package_build(env, Reporter(env.job_id, stage_client, out), stage_client, built)
            done = api.get(f"/v3/jobs/{job['id']}").json()
            assert done["status"] == "success", out.getvalue()
            image = api.get(f"/v3/images/{done['resultant_image_id']}").json()
            files = _check_manifest(artifact_store, image, tmp_path)
            # Uploaded as they are: no second squash, no kernel parameters of kiwi's.
            assert set(files) == {"rootfs", "kernel", "initrd"}
            assert md5_of(files["rootfs"]) == md5_of(base_image.archive)
            assert md5_of(files["kernel"]) == md5_of(kernel)
            assert "mksquashfs" not in out.getvalue()
            assert "job status -> packaging_artifacts" in out.getvalue()
    finally:
        server.stop()


@pytest.mark.slow
def test_create_builds_a_bootable_image(
    job_server: ImsServer,
    jobs_api: httpx.Client,
    ims_client: Ims,
    artifact_store: ArtifactStore,
    key_id: str,
    tmp_path: Path,
) -> None:
    recipe_id = _upload(ims_client, artifact_store, RECIPES / BUILT_RECIPE)
    recipe = jobs_api.get(f"/v3/recipes/{recipe_id}").json()
    start = time.monotonic()
    job = _post_create(jobs_api, recipe_id, key_id)
    assert job["ssh_containers"] is None  # no debug: no SSH for a create job
    done = wait_status(jobs_api, job["id"], {"success"}, timeout=BUILD_TIMEOUT)
    print(f"TIMING create {BUILT_RECIPE}: POST to success {time.monotonic() - start:.1f} s")
    print(f"TIMING create {BUILT_RECIPE}: {_status_timings(jobs_api, job['id'])}")

    assert _statuses(jobs_api, job["id"]) == [
        "fetching_recipe",
        "waiting_for_repos",
        "building_image",
        "packaging_artifacts",
        "success",
    ]
    assert done["status_reason"] is None
    image = jobs_api.get(f"/v3/images/{done['resultant_image_id']}").json()
    assert image["name"] == job["image_root_archive_name"]
    assert image["arch"] == recipe["arch"] == "x86_64"

    files = _check_manifest(artifact_store, image, tmp_path)
    print(
        f"TIMING create {BUILT_RECIPE}: " + ", ".join(f"{k} {p.stat().st_size / 1e6:.1f} MB" for k, p in files.items())
    )
    kernel = files["kernel"].read_bytes()
    assert kernel[0x202:0x206] == b"HdrS", "not an x86 bzImage"
    members = initrd_members(files["initrd"])
    assert any(name.endswith(("usr/lib/systemd/systemd", "init")) for name in members), members[:40]
    assert any("lib/modules/" in name for name in members)
    assert files["rootfs"].read_bytes()[:4] == b"hsqs"
    listing = "\n".join(list_squashfs(files["rootfs"]))
    assert "/usr/sbin/init" in listing and "/usr/lib/systemd/systemd" in listing
    if "openssh-server" in PACKAGES[BUILT_RECIPE]:
        assert "/usr/sbin/sshd" in listing
    status = read_from_squashfs(files["rootfs"], "var/lib/dpkg/status", tmp_path).decode()
    for package in PACKAGES[BUILT_RECIPE]:
        assert f"Package: {package}\nStatus: install ok installed" in status, package

    # Nothing of the build is left on the host: the directory goes, no mount stays behind.
    job_dir = jobs_dir(job_server) / job["id"]
    wait_for(lambda: not (job_dir / "image").exists(), 60, "the job directory to be cleaned")
    assert str(job_dir) not in Path("/proc/self/mountinfo").read_text()


@pytest.mark.slow
def test_failed_build_ends_in_error_with_kiwis_reason(
    jobs_api: httpx.Client, ims_client: Ims, artifact_store: ArtifactStore, key_id: str, tmp_path: Path
) -> None:
    recipe_id = _upload(ims_client, artifact_store, _broken_recipe(tmp_path, "bootstrap"))
    before = _images(jobs_api)
    start = time.monotonic()
    job = _post_create(jobs_api, recipe_id, key_id)
    ended = wait_status(jobs_api, job["id"], {"error"}, timeout=600)
    print(f"TIMING failed create: POST to error {time.monotonic() - start:.1f} s")
    reason = ended["status_reason"] or ""
    print(f"REASON {reason}")
    assert reason.startswith("build-image: ")
    assert f"Unable to locate package {MISSING_PACKAGE}" in reason
    assert ended["resultant_image_id"] is None
    assert _statuses(jobs_api, job["id"]) == ["fetching_recipe", "waiting_for_repos", "building_image", "error"]
    assert _images(jobs_api) == before


@pytest.mark.slow
def test_failed_build_with_debug_opens_a_shell_then_ends_in_error(
    jobs_api: httpx.Client,
    ims_client: Ims,
    artifact_store: ArtifactStore,
    job_key: KeyPair,
    key_id: str,
    tmp_path: Path,
) -> None:
    # Failing in the image phase leaves a real Debian tree to look at.
    recipe_id = _upload(ims_client, artifact_store, _broken_recipe(tmp_path, "image"))
    before = _images(jobs_api)
    start = time.monotonic()
    job = _post_create(jobs_api, recipe_id, key_id, enable_debug=True)
    assert [c["name"] for c in job["ssh_containers"]] == ["debug"]
    waiting = wait_status(jobs_api, job["id"], {"waiting_on_user"}, timeout=900)
    print(f"TIMING debug create: POST to waiting_on_user {time.monotonic() - start:.1f} s")

    seen = ssh_ok(
        jobs_api,
        job_key,
        waiting,
        'ls "$IMAGE_ROOT_PARENT/build/image-root"; ls "$IMAGE_ROOT_PARENT"; '
        'cat "$IMAGE_ROOT_PARENT/build/image-root/etc/debian_version"',
    )
    listed = seen.split()
    assert {"bin", "etc", "usr", "var"} <= set(listed), seen  # the failed build's root
    assert {"kiwi.log", "build_failed", "recipe"} <= set(listed), seen
    assert re.search(r"^12\.\d+$", seen, re.MULTILINE), seen
    ssh_signal(jobs_api, job_key, waiting, 'touch "$IMAGE_ROOT_PARENT/complete"')

    ended = wait_status(jobs_api, job["id"], {"error"}, timeout=60)
    print(f"REASON {ended['status_reason']}")
    assert f"Unable to locate package {MISSING_PACKAGE}" in (ended["status_reason"] or "")
    assert ended["resultant_image_id"] is None
    assert _statuses(jobs_api, job["id"]) == [
        "fetching_recipe",
        "waiting_for_repos",
        "building_image",
        "waiting_on_user",
        "error",
    ]
    assert _images(jobs_api) == before


def _kiwi_running(job_id: str) -> bool:
    for pid in processes_of(job_id):
        try:
            if b"kiwi-ng" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


@pytest.mark.slow
def test_deleting_a_building_job_stops_kiwi_at_once(
    job_server: ImsServer,
    jobs_api: httpx.Client,
    ims_client: Ims,
    artifact_store: ArtifactStore,
    key_id: str,
) -> None:
    recipe_id = _upload(ims_client, artifact_store, RECIPES / BUILT_RECIPE)
    job = _post_create(jobs_api, recipe_id, key_id)
    wait_status(jobs_api, job["id"], {"building_image"}, timeout=300)
    # kiwi waits for the host-wide kiwi lock while another build holds it
    wait_for(lambda: _kiwi_running(job["id"]), 300, "kiwi-ng to run")
    time.sleep(5)  # well into the build: kiwi has mounted /proc, /dev and /sys into the root

    job_dir = jobs_dir(job_server) / job["id"]
    start = time.monotonic()
    assert jobs_api.delete(f"/v3/jobs/{job['id']}").status_code == 204
    wait_gone(jobs_api, job["id"], job_dir, timeout=60)
    wait_for(lambda: not processes_of(job["id"]), 30, "the job's processes to end")
    took = time.monotonic() - start
    print(f"TIMING delete during build: gone in {took:.1f} s")
    # SIGTERM did it: the runner's SIGKILL would only come after its 10 s grace.
    assert took < 10, took
    assert str(job_dir) not in Path("/proc/self/mountinfo").read_text()
