"""Create stage 3, `build-image`: run kiwi-ng on the fetched recipe.

Layout kept from the original: kiwi's target dir is the job directory itself, so the prepared root is
`<parent>/build/image-root` and the log `<parent>/kiwi.log` (where debug-shell users look for them).

Two build types are taken:
- `tbz`: IMS packages kiwi's root tree itself (the original's way). kiwi insists on writing its own
  tar.xz too, which nobody uses, so it gets the fastest xz setting through a runtime config.
- `kis`: kiwi's kernel, initrd and squashfs root are the three artifacts IMS uploads; no second squash.

kiwi runs in the job's bubblewrap sandbox (ims.stages.kiwi_sandbox): it sees only the job's directory,
its package cache and read-only system dirs, and the mounts it makes (/proc, /sys and /dev in the image
root) live in the sandbox's mount namespace. When the sandbox ends, every mount and process in it goes too.
"""

from __future__ import annotations

import codecs
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from ims.stages.create_env import CreateSettings
from ims.stages.environment import JobEnvironment
from ims.stages.kiwi_config import PACKAGED_TYPES, Description, DescriptionError, packaging_refusal, read_description
from ims.stages.kiwi_lock import kiwi_build_lock
from ims.stages.kiwi_output import ProgressFilter
from ims.stages.kiwi_result import kis_artifacts, remove_leftovers
from ims.stages.recipe_fetch import recipe_dir
from ims.stages.reporting import Reporter, StageError
from ims.stages.rootpath import resolve_in_root

BUILD_FAILED = "build_failed"
SUPPORTED_TYPES = PACKAGED_TYPES
CA_IN_IMAGE = "etc/cray/ca/certificate_authority.crt"  # where the original's images carry the cluster CA
CA_NAME = "cray_certificate_authority.crt"
# kiwi's name for the distribution family whose CA store and update tool it should use.
_CA_DISTRIBUTIONS = {
    "apt": "debian",
    "zypper": "suse",
    "dnf": "redhat",
    "dnf4": "redhat",
    "dnf5": "redhat",
    "microdnf": "redhat",
    "yum": "redhat",
    "pacman": "archlinux",
}
_ERROR_LINE = re.compile(r"^\[\s*ERROR\s*\]:\s*(?:\d\d:\d\d:\d\d\s*\|\s*)?(.*)$")
_REASON_LIMIT = 1000
ISOLATE_ARGV = [sys.executable, "-m", "ims.stages.kiwi_sandbox", "--"]


class BuildFailed(StageError):
    """kiwi failed; `<parent>/build_failed` is written and the log kept for a debug shell."""

    def __init__(self, reason: str, log_path: Path) -> None:
        super().__init__(reason)
        self.log_path = log_path


@dataclass(frozen=True)
class BuildResult:
    kind: Literal["tbz", "kis"]
    log_path: Path
    seconds: float
    image_root: Path | None = None  # tbz: the tree to package
    kernel: Path | None = None  # kis: kiwi's artifacts, uploaded as they are
    initrd: Path | None = None
    rootfs: Path | None = None


def kiwi_executable(settings: CreateSettings) -> str:
    if settings.kiwi:
        # Checked here: in the sandbox a missing program is only a non-zero exit with no kiwi log.
        if not (Path(settings.kiwi).is_file() and os.access(settings.kiwi, os.X_OK)):
            raise StageError(f"kiwi-ng {settings.kiwi} is not installed")
        return settings.kiwi
    beside = Path(sys.executable).parent / "kiwi-ng"
    if beside.is_file():
        return str(beside)
    found = shutil.which("kiwi-ng")
    if found is None:
        raise StageError("kiwi-ng is not installed")
    return found


def kiwi_argv(
    kiwi: str,
    *,
    description: Path,
    target: Path,
    build_type: str,
    log_path: Path,
    debug: bool = False,
    runtime_config: Path | None = None,
    ca_cert: Path | None = None,
    ca_distribution: str = "",
    isolate: bool = True,
) -> list[str]:
    argv = [*(ISOLATE_ARGV if isolate else []), kiwi]
    if debug:
        argv.append("--debug")
    argv += ["--logfile", str(log_path)]
    if runtime_config is not None:
        argv += ["--config", str(runtime_config)]
    argv += ["--type", build_type, "system", "build", "--description", str(description), "--target-dir", str(target)]
    if ca_cert is not None:
        argv += ["--ca-cert", str(ca_cert), "--ca-target-distribution", ca_distribution]
    return argv


def last_error_line(log_path: Path) -> str:
    """kiwi's last `[ ERROR ]` message in its log, without the time stamp; '' when there is none."""
    if not log_path.is_file():
        return ""
    last = ""
    with log_path.open(errors="replace") as log:
        for line in log:
            match = _ERROR_LINE.match(line.rstrip("\n"))
            if match and match.group(1).strip():
                last = match.group(1).strip()
    return last[:_REASON_LIMIT]


def install_ca_cert(root: Path, cert: Path) -> list[Path]:
    """Put the cluster CA into a root tree: the original's location plus Debian's local CA store.

    `root` may be an image root or a kiwi `root/` overlay; both are untrusted, so paths are resolved
    with `root` as `/`.
    """
    data = cert.read_bytes()
    written = []
    for relative in (CA_IN_IMAGE, f"usr/local/share/ca-certificates/{CA_NAME}"):
        path = resolve_in_root(root, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # never write through a link left there
        path.write_bytes(data)
        path.chmod(0o644)
        written.append(path)
    return written


def _stream(argv: list[str], out: TextIO) -> int:
    """Run argv, copying its output to `out` as it comes (kiwi draws progress bars with bare CRs)."""
    try:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise StageError(f"{argv[0]} is not installed") from exc
    assert process.stdout is not None
    fd = process.stdout.fileno()
    bars = ProgressFilter()  # only each progress bar's final state reaches the log
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        while chunk := os.read(fd, 65536):
            out.write(bars.feed(decoder.decode(chunk)))
            out.flush()
        out.write(bars.flush())
        out.flush()
    except BaseException:
        # Stopped (SIGTERM -> JobStopped) or broken: do not wait minutes for the build to finish.
        # SIGKILL the sandbox's launcher: bwrap's --die-with-parent then takes kiwi's whole PID
        # namespace down, and its mounts go with its mount namespace.
        process.kill()
        raise
    finally:
        process.stdout.close()
        returncode = process.wait()
    return returncode


def _prepare_ca(settings: CreateSettings, description: Description, recipe: Path, parent: Path) -> Path | None:
    if not settings.ca_cert_file:
        return None
    source = Path(settings.ca_cert_file)
    if not source.is_file():
        raise StageError(f"IMS_CA_CERT_FILE {source} does not exist")
    if description.package_manager not in _CA_DISTRIBUTIONS:
        raise StageError(f"cannot install a CA certificate for package manager {description.package_manager!r}")
    # A fixed name, so kiwi's trust-store copy and the overlay copy are one and the same file.
    staged = parent / "ca" / CA_NAME
    staged.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, staged)
    # The overlay is applied to tbz and kis alike, so both image kinds carry the original's CA path.
    install_ca_cert(recipe / "root", staged)
    return staged


def build_image(env: JobEnvironment, reporter: Reporter, settings: CreateSettings | None = None) -> BuildResult:
    settings = settings or CreateSettings.from_env()
    reporter.status("building_image")
    parent = env.image_root_parent
    recipe = recipe_dir(env)
    log_path = parent / "kiwi.log"
    failed_flag = parent / BUILD_FAILED
    failed_flag.unlink(missing_ok=True)
    log_path.unlink(missing_ok=True)  # kiwi appends: an old run's errors must not become this run's reason

    def fail(reason: str) -> BuildFailed:
        failed_flag.touch()
        return BuildFailed(reason, log_path)

    try:
        description = read_description(recipe)
    except DescriptionError as exc:
        raise fail(str(exc)) from exc
    kind = description.build_type.image
    refusal = packaging_refusal(description.build_type)  # before kiwi runs, never after a build
    if refusal:
        raise fail(refusal)

    # The tar.xz kiwi insists on (tbz; kis unless archive="false") is never uploaded: make it the fastest xz.
    runtime_config = parent / "kiwi-runtime.yml"
    runtime_config.write_text("xz:\n  options: -0 -T0\n")
    try:
        ca = _prepare_ca(settings, description, recipe, parent)
        argv = kiwi_argv(
            kiwi_executable(settings),
            description=recipe,
            target=parent,
            build_type=kind,
            log_path=log_path,
            debug=settings.enable_debug,
            runtime_config=runtime_config,
            ca_cert=ca,
            ca_distribution=_CA_DISTRIBUTIONS.get(description.package_manager, ""),
            isolate=os.geteuid() == 0,
        )
    except StageError as exc:
        raise fail(str(exc)) from exc
    with kiwi_build_lock(reporter.say):
        reporter.say("running " + " ".join(argv))
        start = time.monotonic()
        try:
            returncode = _stream(argv, reporter.out)
        except StageError as exc:
            raise fail(str(exc)) from exc
        seconds = time.monotonic() - start
    reporter.say(f"kiwi-ng exited with {returncode} after {seconds:.1f} s")
    if returncode != 0:
        raise fail(last_error_line(log_path) or f"kiwi-ng exited with {returncode}")

    if kind == "tbz":
        image_root = parent / "build" / "image-root"
        if not image_root.is_dir():
            raise fail(f"kiwi finished but there is no image root at {image_root}")
        removed = remove_leftovers(image_root)
        if removed:
            reporter.say(
                "removed kiwi's own files from the image root (kiwi leaves them out of its images too): "
                + ", ".join(f"/{path}" for path in removed)
            )
        return BuildResult("tbz", log_path, seconds, image_root=image_root)
    try:
        kernel, initrd, rootfs = kis_artifacts(parent, reporter.say)
    except StageError as exc:
        raise fail(str(exc)) from exc
    return BuildResult("kis", log_path, seconds, kernel=kernel, initrd=initrd, rootfs=rootfs)
