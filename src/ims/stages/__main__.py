"""`python -m ims.stages <stage>`: run one job stage with the job's environment."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

from ims.client.http import ImsClient
from ims.stages.customize import make_client, run_customize, user_session_then_package
from ims.stages.environment import JobEnvironment, JobEnvironmentError, token
from ims.stages.package import package
from ims.stages.prepare import prepare
from ims.stages.reporting import JobStopped, Reporter, run_stage


def _sshenv(env: JobEnvironment, reporter: Reporter) -> None:
    user_session_then_package(env, reporter, reporter.client)


def _package(env: JobEnvironment, reporter: Reporter) -> None:
    package(env, reporter, reporter.client)


def _create(env: JobEnvironment) -> int:
    # Imported when chosen: a customize job need not load what a create job builds with (kiwi's templating,
    # YAML), and every import is time before the job starts fetching its image.
    from ims.stages.create import run_create

    return run_create(env)


# name -> what runs with (environment, reporter); other job types add their stages here.
StageBody = Callable[[JobEnvironment, Reporter], None]
STAGES: dict[str, StageBody] = {"prepare": prepare, "sshenv": _sshenv, "package": _package}
# Whole jobs (what the runner starts): every stage of the job type in order, in one process.
JOBS: dict[str, Callable[[JobEnvironment], int]] = {"customize": run_customize, "create": _create}


def _stop_on_sigterm() -> None:
    """Turn the runner's SIGTERM into an exception, so sshd is stopped and the image's files are restored."""

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise JobStopped("the job was stopped")

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    _stop_on_sigterm()
    parser = argparse.ArgumentParser(prog="python -m ims.stages", description=__doc__)
    parser.add_argument("stage", choices=[*STAGES, *JOBS])
    args = parser.parse_args(argv)
    try:
        env = JobEnvironment.from_env()
    except JobEnvironmentError as exc:
        print(f"invalid job environment: {exc}", file=sys.stderr)
        _report_unusable_environment(str(exc))
        return 2
    if args.stage in JOBS:
        return JOBS[args.stage](env)
    client = make_client(env)
    reporter = Reporter(env.job_id, client)
    try:
        return run_stage(args.stage, reporter, lambda: STAGES[args.stage](env, reporter))
    finally:
        if client is not None:
            client.close()


def _report_unusable_environment(reason: str) -> None:
    """Even a broken environment usually names the job and IMS: say so there, not only in the log."""
    job_id, url = os.environ.get("IMS_JOB_ID", "").strip(), os.environ.get("IMS_URL", "").strip()
    if not job_id or not url:
        return
    try:
        token(job_id, "IMS_JOB_ID")
    except JobEnvironmentError:
        return
    job_token = os.environ.get("IMS_JOB_TOKEN") or None
    with ImsClient(url, token=job_token, verify=os.environ.get("CA_CERT") or True) as c:
        Reporter(job_id, c).status("error", f"invalid job environment: {reason}")


if __name__ == "__main__":
    sys.exit(main())
