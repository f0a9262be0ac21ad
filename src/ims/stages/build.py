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

A job whose arch (BUILD_ARCH) is not the host's builds under emulation: kiwi gets `--target-arch`, so the
recipe's `arch="..."` package choices follow the job, the sandbox tells the host's apt-get (kiwi's Debian
bootstrap resolves and downloads with it) the job's Debian architecture, and every binary of the image root
runs through qemu-user-static, which binfmt_misc must have registered: without it the build fails before kiwi.
"""

from __future__ import annotations

import codecs
import os
import re
import shutil
import struct
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
BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")
# The emulation probe's code: exit(0) in three instructions.
_PROBE_CODE = {
    "aarch64": (183, bytes.fromhex("000080d2a80b80d2010000d4")),  # mov x0, #0; mov x8, #93; svc #0
    "x86_64": (62, bytes.fromhex("b83c00000031ff0f05")),  # mov eax, 60; xor edi, edi; syscall
}


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
    target_arch: str | None = None,
) -> list[str]:
    argv = [*(ISOLATE_ARGV if isolate else []), kiwi]
    if debug:
        argv.append("--debug")
    argv += ["--logfile", str(log_path)]
    if runtime_config is not None:
        argv += ["--config", str(runtime_config)]
    if target_arch:
        argv += ["--target-arch", target_arch]
    argv += ["--type", build_type, "system", "build", "--description", str(description), "--target-dir", str(target)]
    if ca_cert is not None:
        argv += ["--ca-cert", str(ca_cert), "--ca-target-distribution", ca_distribution]
    return argv


def binfmt_problem(arch: str, binfmt: Path | None = None) -> str | None:
    """What binfmt_misc's `qemu-<arch>` entry says against running `arch` programs; None when it looks fine.

    Only where binfmt_misc is mounted: in a mount namespace of its own (the LocalRunner's) it is not, while
    the kernel still applies the host's entries.
    """
    binfmt = binfmt or BINFMT_MISC
    if not (binfmt / "register").exists():
        return None
    entry = binfmt / f"qemu-{arch}"
    try:
        lines = entry.read_text().splitlines()
    except OSError:
        return f"qemu-{arch} is not registered in {binfmt} (install qemu-user-static and binfmt-support)"
    if not lines or lines[0].strip() != "enabled":
        return f"{entry} is disabled (update-binfmts --enable qemu-{arch})"
    fields = dict(line.split(None, 1) for line in lines[1:] if " " in line.strip())
    interpreter = fields.get("interpreter", "").strip()
    # Without the F flag the kernel opens the interpreter at each exec; it must be there.
    if interpreter and "F" not in fields.get("flags:", "") and not Path(interpreter).exists():
        return f"{entry} names the interpreter {interpreter}, which does not exist"
    return None


def probe_program(arch: str) -> bytes | None:
    """The smallest static `arch` program: an ELF header, one loadable segment, exit(0). None: unknown arch."""
    if arch not in _PROBE_CODE:
        return None
    machine, code = _PROBE_CODE[arch]
    base, header_size, segment_header_size = 0x400000, 64, 56
    size = header_size + segment_header_size + len(code)
    elf = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, ELF version 1, System V
    elf += struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # ET_EXEC
        machine,
        1,
        base + header_size + segment_header_size,  # entry: the code right after the headers
        header_size,  # program headers
        0,  # no section headers
        0,
        header_size,
        segment_header_size,
        1,
        0,
        0,
        0,
    )
    elf += struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)  # PT_LOAD, R+X, the whole file
    return elf + code


def program_problem(arch: str, scratch: Path) -> str | None:
    """Run a tiny `arch` program (written to `scratch`): why it does not run, None when it does."""
    program = probe_program(arch)
    if program is None:
        return f"no probe program is known for {arch}"
    path = scratch / f".ims-{arch}-probe"
    path.unlink(missing_ok=True)
    path.write_bytes(program)
    path.chmod(0o700)
    try:
        done = subprocess.run([str(path)], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    except OSError as exc:
        return f"an {arch} program does not run here ({exc.strerror}): qemu-{arch} is not registered in binfmt_misc"
    except subprocess.TimeoutExpired:
        return f"an {arch} program did not end within 60 s"
    finally:
        path.unlink(missing_ok=True)
    return None if done.returncode == 0 else f"an {arch} program exited with {done.returncode} instead of 0"


def emulation_problem(arch: str, scratch: Path, binfmt: Path | None = None) -> str | None:
    """Why this host cannot run `arch` programs through qemu-user (binfmt_misc); None when it can."""
    return binfmt_problem(arch, binfmt) or program_problem(arch, scratch)


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

    isolate = os.geteuid() == 0
    host_arch = os.uname().machine
    target_arch = env.build_arch if env.build_arch != host_arch else None
    if target_arch:
        problem = emulation_problem(target_arch, parent)
        if problem:
            raise fail(f"cannot build an {target_arch} image on this {host_arch} host: {problem}")
        if not isolate:
            # The sandbox is what gives the host's apt-get the job's architecture; without it kiwi would
            # bootstrap the root with the host's packages.
            raise fail(f"an {target_arch} build on this {host_arch} host runs only in kiwi's sandbox (as root)")
        reporter.say(f"building an {target_arch} image on this {host_arch} host: its programs run through qemu-user")

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
            isolate=isolate,
            target_arch=target_arch,
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
