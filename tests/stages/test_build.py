"""build-image: kiwi-ng for real on the shipped recipes, driven through the create stages.

The slow tests run the whole create pipeline up to packaging: the recipe is packed and put into SeaweedFS,
fetched through its presigned URL (md5 checked, extracted, templated with this machine's Debian archive),
its repositories probed, and kiwi-ng run as the build stage runs it.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import ims
from ims.artifacts.s3 import ArtifactStore
from ims.client.recipes import pack_recipe
from ims.client.transfer import file_md5
from ims.domain.links import S3Location
from ims.stages.apt_sources import debian_archive_uri
from ims.stages.build import (
    BUILD_FAILED,
    BuildFailed,
    BuildResult,
    build_image,
    install_ca_cert,
    kiwi_argv,
    last_error_line,
)
from ims.stages.create_env import CreateSettings
from ims.stages.environment import JobEnvironment
from ims.stages.recipe_fetch import fetch_recipe
from ims.stages.reporting import Reporter, StageError
from ims.stages.repos import wait_for_repos

RECIPES = Path(ims.__file__).parent / "recipes"


def test_last_error_line(tmp_path: Path) -> None:
    log = tmp_path / "kiwi.log"
    log.write_text(
        "[ INFO    ]: 10:00:00 | start\n"
        "[ ERROR   ]: 10:00:01 | first problem\n"
        "[ DEBUG   ]: 10:00:02 | noise\n"
        "[ ERROR   ]: 10:00:03 | KiwiBootStrapPhaseFailed: Bootstrap package installation failed: x\n"
        "continued detail\n"
    )
    assert last_error_line(log) == "KiwiBootStrapPhaseFailed: Bootstrap package installation failed: x"
    assert last_error_line(tmp_path / "none.log") == ""


def test_kiwi_argv_is_a_plain_list() -> None:
    argv = kiwi_argv(
        "/venv/bin/kiwi-ng",
        description=Path("/mnt/image/recipe"),
        target=Path("/mnt/image"),
        build_type="kis",
        log_path=Path("/mnt/image/kiwi.log"),
        debug=True,
        ca_cert=Path("/mnt/image/ca/c.crt"),
        ca_distribution="debian",
        isolate=False,
    )
    assert argv == [
        "/venv/bin/kiwi-ng", "--debug", "--logfile", "/mnt/image/kiwi.log", "--type", "kis", "system", "build",
        "--description", "/mnt/image/recipe", "--target-dir", "/mnt/image",
        "--ca-cert", "/mnt/image/ca/c.crt", "--ca-target-distribution", "debian",
    ]  # fmt: skip
    isolated = kiwi_argv("k", description=Path("d"), target=Path("t"), build_type="tbz", log_path=Path("l"))
    assert isolated[1:4] == ["-m", "ims.stages.kiwi_sandbox", "--"] and isolated[4] == "k"  # bwrap sandbox


def test_install_ca_cert_stays_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    # A hostile image pointing its CA directory at the host: resolved with the root as `/`.
    (root / "etc/cray").symlink_to(outside)
    cert = tmp_path / "ca.crt"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    written = install_ca_cert(root, cert)
    assert all(path.is_relative_to(root) for path in written)
    assert list(outside.iterdir()) == []
    assert (root / "usr/local/share/ca-certificates/cray_certificate_authority.crt").read_text() == cert.read_text()


def _job(tmp_path: Path, **extra: str) -> tuple[JobEnvironment, Reporter, io.StringIO]:
    parent = tmp_path / "image"
    parent.mkdir(parents=True, exist_ok=True)
    env = JobEnvironment.from_env({"IMS_JOB_ID": "job-1", "IMAGE_ROOT_PARENT": str(parent), **extra})
    out = io.StringIO()
    return env, Reporter(env.job_id, None, out), out


def test_unsupported_build_type_fails_before_kiwi(tmp_path: Path) -> None:
    env, reporter, out = _job(tmp_path)
    recipe = env.image_root_parent / "recipe"
    recipe.mkdir()
    (recipe / "config.xml").write_text('<image name="x"><preferences><type image="oem"/></preferences></image>')
    with pytest.raises(BuildFailed, match="'oem' is not supported"):
        build_image(env, reporter, CreateSettings())
    assert (env.image_root_parent / BUILD_FAILED).exists()
    assert "job status -> building_image" in out.getvalue()


def _minimal_recipe(env: JobEnvironment, manager: str = "apt") -> None:
    recipe = env.image_root_parent / "recipe"
    recipe.mkdir()
    (recipe / "config.xml").write_text(
        f'<image name="x"><preferences><packagemanager>{manager}</packagemanager><type image="tbz"/>'
        "</preferences></image>"
    )


@pytest.mark.parametrize(
    ("settings", "manager", "reason"),
    [
        (CreateSettings(kiwi="/nonexistent/kiwi-ng"), "apt", "is not installed"),
        (CreateSettings(ca_cert_file="/nonexistent/ca.crt"), "apt", "does not exist"),
        (CreateSettings(ca_cert_file=__file__), "conda", "package manager 'conda'"),
    ],
)
def test_setup_problems_fail_the_build_with_the_flag(
    tmp_path: Path, settings: CreateSettings, manager: str, reason: str
) -> None:
    env, reporter, _ = _job(tmp_path)
    _minimal_recipe(env, manager)
    with pytest.raises(BuildFailed, match=reason):
        build_image(env, reporter, settings)
    assert (env.image_root_parent / BUILD_FAILED).exists()


# --- real builds ------------------------------------------------------------------------------------------


def _upload_recipe(store: ArtifactStore, source: Path, scratch: Path) -> tuple[str, str]:
    scratch.mkdir(parents=True, exist_ok=True)
    archive = scratch / "recipe.tar.gz"
    pack_recipe(source, archive)
    location = S3Location("ims", f"recipes/test-{time.monotonic_ns()}/recipe.tar.gz")
    store.upload_file(archive, location)
    return store.presign_get(location), file_md5(archive)


def _create_pipeline(
    tmp_path: Path, store: ArtifactStore, source: Path, timings: dict[str, float], ca_cert: Path | None = None
) -> tuple[BuildResult | BuildFailed, JobEnvironment, io.StringIO]:
    url, md5 = _upload_recipe(store, source, tmp_path)
    env, reporter, out = _job(
        tmp_path, DOWNLOAD_URL=url, DOWNLOAD_MD5SUM=md5, IMS_DOWNLOAD_ATTEMPTS="2", IMS_DOWNLOAD_RETRY_SECONDS="1"
    )
    settings = CreateSettings(
        template_dictionary=json.dumps({"debian_mirror": debian_archive_uri()}),
        repos_timeout=60,
        repos_interval=2,
        ca_cert_file=str(ca_cert or ""),
    )
    start = time.monotonic()
    recipe = fetch_recipe(env, reporter, settings)
    timings["fetch-recipe"] = time.monotonic() - start
    assert "{{" not in (recipe / "config.xml").read_text()
    assert not (env.image_root_parent / "recipe.tar.gz").exists()
    start = time.monotonic()
    wait_for_repos(env, reporter, settings)
    timings["wait-for-repos"] = time.monotonic() - start
    start = time.monotonic()
    try:
        result: BuildResult | BuildFailed = build_image(env, reporter, settings)
    except BuildFailed as exc:
        result = exc
    timings["build-image"] = time.monotonic() - start
    return result, env, out


def _report(name: str, timings: dict[str, float]) -> None:
    print(f"\n{name}: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in timings.items()))


def _cleanup(env: JobEnvironment) -> None:
    # kiwi ran in its own mount namespace, so nothing is mounted here any more: a plain delete is safe.
    shutil.rmtree(env.image_root_parent, ignore_errors=True)


def _assert_no_mounts_under(path: Path) -> None:
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(path) not in mounts


@pytest.mark.slow
def test_kis_recipe_builds_kernel_initrd_and_squashfs(tmp_path: Path, artifact_store: ArtifactStore) -> None:
    timings: dict[str, float] = {}
    result, env, out = _create_pipeline(tmp_path, artifact_store, RECIPES / "debian-bookworm", timings)
    _report("debian-bookworm (kis)", timings)
    assert isinstance(result, BuildResult), out.getvalue()[-3000:]
    assert result.kind == "kis" and result.image_root is None
    assert result.kernel and result.initrd and result.rootfs
    assert b"HdrS" in result.kernel.read_bytes()[:1024]  # x86 boot protocol header: a real bzImage
    assert result.initrd.stat().st_size > 5_000_000
    assert result.rootfs.read_bytes()[:4] == b"hsqs"  # squashfs superblock magic
    assert not (env.image_root_parent / BUILD_FAILED).exists()
    assert "job status -> building_image" in out.getvalue()
    _assert_no_mounts_under(env.image_root_parent)
    _cleanup(env)


def _make_ca(directory: Path) -> Path:
    cert = directory / "ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=IMS test CA", "-days", "2",
         "-keyout", str(directory / "ca.key"), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert


@pytest.mark.slow
def test_tbz_recipe_leaves_a_root_with_boot_files(tmp_path: Path, artifact_store: ArtifactStore) -> None:
    timings: dict[str, float] = {}
    ca = _make_ca(tmp_path)
    result, env, out = _create_pipeline(tmp_path, artifact_store, RECIPES / "debian-bookworm-tbz", timings, ca)
    _report("debian-bookworm-tbz", timings)
    assert isinstance(result, BuildResult), out.getvalue()[-3000:]
    assert result.kind == "tbz" and result.image_root == env.image_root_parent / "build" / "image-root"
    boot = result.image_root / "boot"
    # The packager takes boot/<kernel_file_name> and boot/<initrd_file_name>: the job defaults must exist.
    assert (boot / env.kernel_filename).is_symlink() and (boot / env.kernel_filename).is_file()
    assert (boot / env.initrd_filename).is_file()
    assert b"HdrS" in (boot / env.kernel_filename).read_bytes()[:1024]
    # The cluster CA: where the original's images carry it, and in the image's own trust bundle.
    body = "".join(ca.read_text().split("\n")[1:4])
    assert (result.image_root / "etc/cray/ca/certificate_authority.crt").read_text() == ca.read_text()
    assert body in "".join((result.image_root / "etc/ssl/certs/ca-certificates.crt").read_text().split("\n"))
    _assert_no_mounts_under(env.image_root_parent)
    _cleanup(env)


@pytest.mark.slow
def test_broken_recipe_fails_with_kiwis_last_error(tmp_path: Path, artifact_store: ArtifactStore) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(RECIPES / "debian-bookworm-tbz", broken)
    config = broken / "config.xml"
    # In the bootstrap list the missing package is found out in seconds, before any chroot work.
    config.write_text(
        config.read_text().replace(
            '<package name="ca-certificates"/>',
            '<package name="ca-certificates"/><package name="ims-no-such-package"/>',
        )
    )
    timings: dict[str, float] = {}
    result, env, out = _create_pipeline(tmp_path / "job", artifact_store, broken, timings)
    _report("broken recipe", timings)
    assert isinstance(result, BuildFailed), out.getvalue()[-3000:]
    assert (env.image_root_parent / BUILD_FAILED).exists()
    assert result.log_path == env.image_root_parent / "kiwi.log"
    reason = str(result)
    assert reason == last_error_line(result.log_path) and reason
    assert "Unable to locate package ims-no-such-package" in reason
    assert isinstance(result, StageError)
    _assert_no_mounts_under(env.image_root_parent)
    _cleanup(env)
