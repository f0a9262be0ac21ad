"""aarch64 create jobs on this x86_64 host, by emulation: kiwi-ng with `--target-arch aarch64`, the host's
apt-get told the arm64 architecture by kiwi's sandbox, and every program of the image root run through
qemu-user-static (binfmt_misc).

The quick tests check the pieces without kiwi. The real build (the shipped tbz recipe uploaded with arch
aarch64) is opt-in: IMS_TEST_AARCH64_CREATE=1, as root, with qemu-aarch64 registered in binfmt_misc. It takes
tens of minutes on 2 cores (every maintainer script, apt-get in the root and update-initramfs are emulated).
"""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.jobs.kit import logs
from tests.jobs.test_create_e2e import RECIPES, _check_manifest, _post_create, _status_timings, initrd_members
from tests.support.arm64root import emulation_problem as host_emulation_problem
from tests.support.images import read_from_squashfs
from tests.support.servers import ImsServer

from ims.artifacts.s3 import ArtifactStore
from ims.client.http import ImsClient
from ims.client.recipes import upload_recipe
from ims.client.resources import Ims
from ims.stages import build
from ims.stages.apt_sources import debian_archive_uri
from ims.stages.build import (
    BUILD_FAILED,
    BuildFailed,
    binfmt_problem,
    build_image,
    kiwi_argv,
    probe_program,
    program_problem,
)
from ims.stages.create_env import CreateSettings
from ims.stages.environment import JobEnvironment
from ims.stages.kiwi_sandbox import APT_ARCH_CONF, apt_architecture_conf, kiwi_sandbox
from ims.stages.reporting import Reporter
from ims.stages.sandbox import SandboxError

ELF_MACHINE_AARCH64 = 183
BUILD_TIMEOUT = 3600.0
RECIPE = "debian-bookworm-tbz"
FOREIGN = "x86_64" if os.uname().machine == "aarch64" else "aarch64"


# --- the pieces, without kiwi -------------------------------------------------------------------------------


def test_kiwi_gets_the_target_arch_as_a_global_option() -> None:
    argv = kiwi_argv(
        "k", description=Path("d"), target=Path("t"), build_type="tbz", log_path=Path("l"), target_arch="aarch64"
    )
    at = argv.index("--target-arch")
    assert argv[at + 1] == "aarch64" and at < argv.index("system")
    native = kiwi_argv("k", description=Path("d"), target=Path("t"), build_type="tbz", log_path=Path("l"))
    assert "--target-arch" not in native


def test_the_sandbox_tells_the_hosts_apt_the_target_arch(tmp_path: Path) -> None:
    assert apt_architecture_conf("aarch64") == 'APT::Architecture "arm64";\nAPT::Architectures { "arm64"; };\n'
    with pytest.raises(SandboxError, match="riscv64"):
        apt_architecture_conf("riscv64")
    argv = ["kiwi-ng", "--target-arch", "aarch64", "system", "build", "--target-dir", str(tmp_path)]
    box = kiwi_sandbox(argv, {})
    assert box.files.count((APT_ARCH_CONF, apt_architecture_conf("aarch64").encode())) == 1
    native = kiwi_sandbox(["kiwi-ng", "system", "build", "--target-dir", str(tmp_path)], {})
    assert not [name for name, _ in native.files if name == APT_ARCH_CONF]


def test_binfmt_misc_entries_are_read_where_it_is_mounted(tmp_path: Path) -> None:
    assert binfmt_problem("aarch64", tmp_path) is None  # not mounted here: the probe program decides
    (tmp_path / "register").touch()
    assert "not registered" in (binfmt_problem("aarch64", tmp_path) or "")
    entry = tmp_path / "qemu-aarch64"
    entry.write_text("disabled\ninterpreter /usr/bin/true\nflags: PF\n")
    assert "disabled" in (binfmt_problem("aarch64", tmp_path) or "")
    entry.write_text("enabled\ninterpreter /nonexistent/qemu-aarch64\nflags: P\noffset 0\n")
    assert "/nonexistent/qemu-aarch64" in (binfmt_problem("aarch64", tmp_path) or "")
    entry.write_text("enabled\ninterpreter /nonexistent/qemu-aarch64\nflags: PF\noffset 0\n")
    assert binfmt_problem("aarch64", tmp_path) is None  # F: the kernel opened it at registration
    entry.write_text("enabled\ninterpreter /usr/bin/true\nflags: P\n")
    assert binfmt_problem("aarch64", tmp_path) is None


def test_the_probe_program_runs_natively(tmp_path: Path) -> None:
    native = os.uname().machine
    program = probe_program(native)
    assert program is not None and int.from_bytes(program[18:20], "little") == {"x86_64": 62, "aarch64": 183}[native]
    assert program_problem(native, tmp_path) is None
    assert not list(tmp_path.iterdir())
    assert "no probe program" in (program_problem("riscv64", tmp_path) or "")


def test_a_foreign_arch_without_emulation_fails_before_kiwi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binfmt = tmp_path / "binfmt_misc"
    binfmt.mkdir()
    (binfmt / "register").touch()
    monkeypatch.setattr(build, "BINFMT_MISC", binfmt)
    parent = tmp_path / "image"
    (parent / "recipe").mkdir(parents=True)
    (parent / "recipe" / "config.xml").write_text(
        '<image name="x"><preferences><packagemanager>apt</packagemanager><type image="tbz"/></preferences></image>'
    )
    env = JobEnvironment.from_env({"IMS_JOB_ID": "job-1", "IMAGE_ROOT_PARENT": str(parent), "BUILD_ARCH": FOREIGN})
    out = io.StringIO()
    with pytest.raises(BuildFailed, match=f"cannot build an {FOREIGN} image on this .* host: qemu-{FOREIGN} is not"):
        build_image(env, Reporter(env.job_id, None, out), CreateSettings(kiwi="/nonexistent/kiwi-ng"))
    assert (parent / BUILD_FAILED).exists()
    assert not (parent / "kiwi.log").exists()


# --- the real emulated build (opt-in) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ims_client(job_server: ImsServer) -> Iterator[Ims]:
    with Ims(ImsClient(job_server.url)) as client:
        yield client


def _wait_success(api: httpx.Client, job_id: str, timeout: float) -> dict[str, object]:
    """Poll every few seconds (the build takes tens of minutes on a shared machine)."""
    deadline = time.monotonic() + timeout
    record: dict[str, object] = {}
    while time.monotonic() < deadline:
        record = api.get(f"/v3/jobs/{job_id}").json()
        if record["status"] == "success":
            return record
        if record["status"] == "error":
            raise AssertionError(f"job ended in error: {record.get('status_reason')}\n{logs(api, job_id)[-20000:]}")
        time.sleep(5)
    raise AssertionError(f"job still {record.get('status')} after {timeout} s\n{logs(api, job_id)[-20000:]}")


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("IMS_TEST_AARCH64_CREATE") != "1", reason="opt-in: IMS_TEST_AARCH64_CREATE=1")
@pytest.mark.skipif(os.geteuid() != 0, reason="jobs need root")
@pytest.mark.skipif(os.uname().machine == "aarch64", reason="the host runs aarch64 natively")
def test_emulated_aarch64_create(
    jobs_api: httpx.Client,
    ims_client: Ims,
    artifact_store: ArtifactStore,
    key_id: str,
    tmp_path: Path,
) -> None:
    problem = host_emulation_problem()
    if problem:
        pytest.skip(f"no aarch64 emulation: {problem}")
    uploaded = upload_recipe(
        ims_client,
        artifact_store,
        name=f"{RECIPE}-aarch64-{uuid.uuid4().hex[:6]}",
        source=RECIPES / RECIPE,
        linux_distribution="debian12",
        arch="aarch64",
        template_dictionary={"debian_mirror": debian_archive_uri()},
    )
    recipe_id = str(uploaded.recipe["id"])
    assert jobs_api.get(f"/v3/recipes/{recipe_id}").json()["arch"] == "aarch64"
    load_start = _loadavg()
    start = time.monotonic()
    job = _post_create(jobs_api, recipe_id, key_id)
    assert job["arch"] == "aarch64" and job["kernel_file_name"] == "Image"
    done = _wait_success(jobs_api, job["id"], BUILD_TIMEOUT)
    took = time.monotonic() - start
    load_end = _loadavg()
    print(f"TIMING aarch64_create (emulated, tbz): POST->success {took:.0f} s; loadavg {load_start} -> {load_end}")
    print(f"TIMING aarch64_create (emulated, tbz): {_status_timings(jobs_api, job['id'])}")
    assert "building an aarch64 image on this x86_64 host" in logs(jobs_api, job["id"])

    image = jobs_api.get(f"/v3/images/{done['resultant_image_id']}").json()
    assert image["arch"] == "aarch64"
    files = _check_manifest(artifact_store, image, tmp_path)
    print(
        "TIMING aarch64_create (emulated, tbz): "
        + ", ".join(f"{kind} {path.stat().st_size / 1e6:.1f} MB" for kind, path in files.items())
    )
    # Debian's arm64 kernel is an uncompressed arm64 Image (EFI stub): "ARM\x64" at 0x38.
    assert files["kernel"].read_bytes()[0x38:0x3C] == b"ARM\x64", "not an arm64 kernel Image"
    assert any("lib/modules/" in name for name in initrd_members(files["initrd"]))
    for member in ("usr/bin/dpkg", "usr/bin/true"):
        binary = read_from_squashfs(files["rootfs"], member, tmp_path)
        assert binary[:4] == b"\x7fELF", member
        assert int.from_bytes(binary[18:20], "little") == ELF_MACHINE_AARCH64, member
    status = read_from_squashfs(files["rootfs"], "var/lib/dpkg/status", tmp_path).decode()
    for package in ("linux-image-arm64", "initramfs-tools", "systemd-sysv"):
        assert f"Package: {package}\nStatus: install ok installed" in status, package
    assert "Package: linux-image-amd64\n" not in status
    assert "Architecture: amd64" not in status
