"""The customize job from start to end: prepare -> SSH environment -> package."""

from __future__ import annotations

from collections.abc import Callable

from ims.client.http import ImsClient
from ims.stages.environment import JobEnvironment
from ims.stages.package import package
from ims.stages.preflight import check_packaging
from ims.stages.prepare import prepare
from ims.stages.reporting import Reporter, StageError, run_stage
from ims.stages.signals import Verdict
from ims.stages.sshenv import sshenv


def make_client(env: JobEnvironment) -> ImsClient | None:
    if not env.ims_url:
        return None
    return ImsClient(env.ims_url, token=env.ims_token or None, verify=env.ca_cert or True)


def user_session_then_package(env: JobEnvironment, reporter: Reporter, client: ImsClient | None) -> None:
    verdict = sshenv(env, reporter)
    if verdict is Verdict.FAILED:
        # Nothing is uploaded; like the original, a `failed` verdict ends the job in `error`.
        raise StageError("the user marked the customization as failed; no image was created")
    package(env, reporter, client)


def run_customize(env: JobEnvironment, reporter: Reporter | None = None) -> int:
    client = make_client(env)
    reporter = reporter or Reporter(env.job_id, client)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("prepare", lambda: prepare(env, reporter)),
        ("preflight", lambda: check_packaging(env, reporter)),  # before SSH: can the result be packaged?
        ("sshenv", lambda: user_session_then_package(env, reporter, client)),
    ]
    try:
        for name, body in steps:
            code = run_stage(name, reporter, body)
            if code != 0:
                return code
        return 0
    finally:
        if client is not None:
            client.close()
