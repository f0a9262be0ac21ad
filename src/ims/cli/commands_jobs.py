"""`ims jobs`: create and customize jobs; `--wait` follows one to its end, `logs` shows its log."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from enum import StrEnum

import typer

from ims.cli.crud import RecordCommands, add_describe
from ims.cli.output import OutputFormat
from ims.cli.session import Session, api_command
from ims.cli.ssh_hints import host_keys_from_log, ssh_hint
from ims.client.follow import WAITING_ON_USER, ssh_access, wait_for_job
from ims.client.http import ImsApiError
from ims.client.resources import Record
from ims.domain.jobs import JOB_STATUSES

app = typer.Typer(help="Image create and customize jobs (cray ims jobs).", no_args_is_help=True)
COLUMNS = ("id", "job_type", "status", "artifact_id", "image_root_archive_name", "resultant_image_id", "created")
# `jobs list`: most telling first, since columns go from the right on a narrow terminal.
LIST_COLUMNS = (
    "id",
    "job_type",
    "status",
    "ssh_port",
    "status_reason",
    "image_root_archive_name",
    "artifact_id",
    "resultant_image_id",
    "created",
)

add_describe(RecordCommands(app, "jobs", "job", lambda ims: ims.jobs, COLUMNS))


class JobType(StrEnum):
    create = "create"
    customize = "customize"


def _say(message: str) -> None:
    # Progress of a followed job goes to stderr, so stdout stays the final record for scripts.
    typer.echo(message, err=True)


def _status_reporter(session: Session) -> Callable[[Record], None]:
    def on_status(job: Record) -> None:
        reason = f" ({job['status_reason']})" if job.get("status_reason") else ""
        _say(f"job {job.get('id')}: {job.get('status')}{reason}")
        if job.get("status") == WAITING_ON_USER:
            _how_to_log_in(session, job)

    return on_status


def _how_to_log_in(session: Session, job: Record) -> None:
    access = ssh_access(job)
    if access is None:
        _say("the job waits for you, but lists no SSH container")
        return
    job_id = str(job.get("id"))
    try:
        # The stage writes its host keys to the log before it reports waiting_on_user.
        keys = host_keys_from_log("".join(session.ims.jobs.logs(job_id, follow=False)))
    except ImsApiError:
        keys = []
    try:
        public_key = str(session.ims.public_keys.get(str(job.get("public_key_id")))["public_key"])
    except (ImsApiError, KeyError):
        public_key = None
    hint = ssh_hint(job_id, access, keys, public_key)
    for key in keys:
        _say(f"host key:     {key.kind} {key.fingerprint}   (new for this job; pinned in {hint.known_hosts})")
    if not keys:
        _say(f"host key:     not in the job's log; the first connection accepts it into {hint.known_hosts}")
    _say(f"log in with:  {hint.command}")
    for line in hint.known_hosts_lines(access):
        _say(f"or pin it:    {line}   (a known_hosts line)")
    _say(f"when done:    {access.done_command}   (to discard: {access.discard_command})")


def _on_log(chunk: str) -> None:
    sys.stderr.write(chunk)
    sys.stderr.flush()


def follow(session: Session, job_id: str, *, logs: bool, timeout: float | None) -> None:
    on_status = _status_reporter(session)
    job = wait_for_job(session.ims, job_id, on_status=on_status, on_log=_on_log if logs else None, timeout=timeout)
    session.show(job)
    if job.get("status") != "success":
        raise typer.Exit(1)


def _check_status(values: list[str] | None) -> list[str] | None:
    for value in values or ():
        if value.lower() not in JOB_STATUSES:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(JOB_STATUSES)}")
    return values


_STATUS_HELP = "Only jobs in this status; repeat for more."


@api_command(app, "list")
def list_jobs(
    session: Session,
    status: list[str] | None = typer.Option(None, "--status", callback=_check_status, help=_STATUS_HELP),
    job_type: JobType | None = typer.Option(None, "--job-type", help="Only create or only customize jobs."),
) -> None:
    """List jobs, optionally only some statuses or one type.

    Example: ims jobs list --status waiting_on_user --format json
    """
    jobs = session.ims.jobs.list(
        status=[value.lower() for value in status or ()], job_type=job_type.value if job_type else None
    )
    if session.fmt is OutputFormat.table:
        jobs = [{**job, "ssh_port": _ssh_port(job)} for job in jobs]
    session.show(jobs, LIST_COLUMNS)


def _ssh_port(job: Record) -> int | None:
    """The port to log in to the job on, while it has an SSH container (`connection_info.customer_access`)."""
    access = ssh_access(job)
    return access.port if access is not None else None


@api_command(app, "create")
def create_job(
    session: Session,
    job_type: JobType = typer.Option(..., "--job-type", help="create: build from a recipe; customize: open an image."),
    artifact_id: str = typer.Option(..., "--artifact-id", help="Recipe id (create) or image id (customize)."),
    public_key_id: str = typer.Option(..., "--public-key-id", help="Key allowed to log in to the job."),
    image_root_archive_name: str = typer.Option(..., "--image-root-archive-name", help="Name of the new image."),
    kernel_file_name: str | None = typer.Option(None, "--kernel-file-name", help="vmlinuz (x86_64) or Image."),
    initrd_file_name: str | None = typer.Option(None, "--initrd-file-name", help="Default initrd."),
    kernel_parameters_file_name: str | None = typer.Option(None, "--kernel-parameters-file-name"),
    enable_debug: bool | None = typer.Option(
        None,
        "--enable-debug/--no-enable-debug",
        metavar="",
        help="On failure, keep the job open for SSH (cray form: --enable-debug true).",
    ),
    ssh_containers_jail: bool | None = typer.Option(
        None,
        "--ssh-containers-jail/--no-ssh-containers-jail",
        metavar="",
        help="customize: log in chrooted into the image.",
    ),
    require_dkms: bool | None = typer.Option(
        None, "--require-dkms/--no-require-dkms", metavar="", help="Build DKMS modules."
    ),
    build_env_size: int | None = typer.Option(None, "--build-env-size", min=1, help="GiB of build space."),
    job_mem_size: int | None = typer.Option(None, "--job-mem-size", min=1, help="GiB of memory."),
    wait: bool = typer.Option(
        False,
        "--wait/--no-wait",
        metavar="",
        help="Follow status and log until the job ends; exit 1 on error (cray form: --wait true).",
    ),
    timeout: float | None = typer.Option(None, "--timeout", min=1, help="With --wait: give up after SECONDS."),
) -> None:
    """Start a job: build an image from a recipe, or open an image for customization over SSH.

    With --wait the job's status changes and log go to stderr; when it waits for you, the SSH command to log in with is printed; the final record goes to stdout.

    Example: ims jobs create --job-type customize --artifact-id $IMAGE --public-key-id $KEY --image-root-archive-name my-image --wait
    """
    containers = None
    if ssh_containers_jail is not None:
        containers = [{"name": job_type.value, "jail": ssh_containers_jail}]
    job = session.ims.jobs.create(
        job_type=job_type.value,
        artifact_id=artifact_id,
        public_key_id=public_key_id,
        image_root_archive_name=image_root_archive_name,
        kernel_file_name=kernel_file_name,
        initrd_file_name=initrd_file_name,
        kernel_parameters_file_name=kernel_parameters_file_name,
        enable_debug=enable_debug,
        require_dkms=require_dkms,
        build_env_size=build_env_size,
        job_mem_size=job_mem_size,
        ssh_containers=containers,
    )
    if not wait:
        session.show(job)
        return
    follow(session, str(job["id"]), logs=True, timeout=timeout)


@api_command(app, "wait")
def wait_job(
    session: Session,
    job_id: str = typer.Argument(..., metavar="ID"),
    logs: bool = typer.Option(True, "--logs/--no-logs", metavar="", help="Stream the job's log to stderr meanwhile."),
    timeout: float | None = typer.Option(None, "--timeout", min=1, help="Give up after SECONDS (exit 1)."),
) -> None:
    """Follow a job until it ends; exit 0 on success, 1 on error.

    Example: ims jobs wait 6d1cbd6a-3ea4-4b2a-9c3e-1f1e7c0fbd2f --no-logs --format json
    """
    follow(session, job_id, logs=logs, timeout=timeout)


@api_command(app, "logs", output=False)
def job_logs(
    session: Session,
    job_id: str = typer.Argument(..., metavar="ID"),
    follow_log: bool = typer.Option(False, "--follow", "-f", metavar="", help="Keep streaming until the job ends."),
) -> None:
    """Print a job's log (all its stages).

    Example: ims jobs logs 6d1cbd6a-3ea4-4b2a-9c3e-1f1e7c0fbd2f --follow
    """
    for chunk in session.ims.jobs.logs(job_id, follow=follow_log):
        sys.stdout.write(chunk)
        sys.stdout.flush()


@api_command(app, "delete", output=False)
def delete_job(session: Session, job_id: str = typer.Argument(..., metavar="ID")) -> None:
    """Delete a job and everything it still holds (processes, SSH access, scratch space).

    Example: ims jobs delete 6d1cbd6a-3ea4-4b2a-9c3e-1f1e7c0fbd2f
    """
    session.ims.jobs.delete(job_id)


def _check_age(value: str | None) -> str | None:
    # The server treats an age it cannot parse as zero and deletes every job; refuse it here instead.
    if value is not None and not re.fullmatch(r"(\d+[wdhm])+", value, re.IGNORECASE):
        raise typer.BadParameter(f"{value!r} is not an age like 1d, 6h, 2w3d or 90m")
    return value


@api_command(app, "deleteall", output=False)
def delete_jobs(
    session: Session,
    status: list[str] | None = typer.Option(None, "--status", callback=_check_status, help=_STATUS_HELP),
    job_type: JobType | None = typer.Option(None, "--job-type", help="Only create or only customize jobs."),
    age: str | None = typer.Option(
        None, "--age", callback=_check_age, help="Only jobs older than this, e.g. 1d, 6h, 2w3d, 90m."
    ),
) -> None:
    """Delete jobs; filters combine (AND); without any, every job goes.

    Example: ims jobs deleteall --status success --status error --age 1d
    """
    session.ims.jobs.delete_matching(
        status=[value.lower() for value in status or ()], job_type=job_type.value if job_type else None, age=age
    )
