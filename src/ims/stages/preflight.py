"""Check, before a customize job opens SSH, that its packaging step will be able to run.

Packaging (stages/package.py) takes the kernel and initrd from the image's `/boot/<kernel_file_name>` and
`/boot/<initrd_file_name>` and squashes the root with `mksquashfs`. An image that lacks them would be
opened, changed by a person or Ansible for an hour, and then fail at the end with the work thrown away.
This check fails the job before the SSH environment starts, with the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ims.stages.environment import JobEnvironment
from ims.stages.reporting import Reporter, StageError
from ims.stages.rootpath import UnsafePath, regular_file_in_root


def packaging_problems(env: JobEnvironment, image_root: Path) -> list[str]:
    """What would make packaging of `image_root` fail; empty when nothing would."""
    problems: list[str] = []
    if not image_root.is_dir():
        return [f"there is no image root at {image_root}"]
    for name, file_name in (("kernel", env.kernel_filename), ("initrd", env.initrd_filename)):
        try:
            regular_file_in_root(image_root, f"boot/{file_name}")  # the rule packaging applies (package.boot_files)
        except UnsafePath as exc:
            problems.append(f"no {name}: {exc}")
    if shutil.which("mksquashfs") is None:
        problems.append("mksquashfs is not installed on the job's host (squashfs-tools)")
    if not env.image_root_archive_name:
        problems.append("IMAGE_ROOT_ARCHIVE_NAME is not set")
    return problems


def check_packaging(env: JobEnvironment, reporter: Reporter, image_root: Path | None = None) -> None:
    """Raise StageError naming every problem; say in the log that the image can be packaged otherwise."""
    root = image_root or env.image_root
    problems = packaging_problems(env, root)
    if problems:
        raise StageError(
            "the image could not be packaged after customization, so no SSH session was opened: "
            + "; ".join(problems)
            + f" (kernel_file_name {env.kernel_filename!r}, initrd_file_name {env.initrd_filename!r})"
        )
    reporter.say(
        f"preflight: {root} has /boot/{env.kernel_filename} and /boot/{env.initrd_filename}; packaging can run"
    )
