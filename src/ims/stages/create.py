"""The create job from start to end: fetch-recipe -> wait-for-repos -> build-image -> package.

Statuses, in the original's order: `fetching_recipe`, `waiting_for_repos`, `building_image`,
`packaging_artifacts`, `success` (with `resultant_image_id`). Any failure ends in `error` with the reason.

Packaging depends on the recipe's kiwi build type:
- `tbz`: kiwi leaves a root tree at `<parent>/build/image-root`; it is squashed and uploaded as a
  customize job's root is, kernel and initrd taken from its `boot/<job's file names>`.
- `kis`: kiwi's own kernel, initrd and squashfs root are uploaded as they are (no second squash); the
  job's kernel and initrd file names do not matter.

A failed build with `enable_debug` first opens the SSH debug environment over the failed build root
(status `waiting_on_user`; the user ends it with `complete` or `failed`), then the job ends in `error`
with kiwi's last error line either way: there is no image to package.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ims.client.http import ImsClient
from ims.stages.build import BuildFailed, BuildResult, build_image
from ims.stages.create_env import CreateSettings
from ims.stages.customize import make_client
from ims.stages.environment import JobEnvironment, JobEnvironmentError
from ims.stages.package import package, publish
from ims.stages.recipe_fetch import fetch_recipe
from ims.stages.reporting import Reporter, StageError, run_stage
from ims.stages.repos import wait_for_repos
from ims.stages.sshenv import sshenv


def build_root(env: JobEnvironment) -> Path:
    """Where kiwi prepares the image's root tree (the original's `/mnt/image/build/image-root`)."""
    return env.image_root_parent / "build" / "image-root"


def debug_shell(env: JobEnvironment, reporter: Reporter, failure: BuildFailed) -> None:
    """Let the user look at a failed build over SSH until `complete` or `failed`; never raises StageError."""
    root = build_root(env)
    if not root.is_dir():
        # kiwi failed before it made the tree (e.g. in the bootstrap phase); the log is still worth a look.
        root.mkdir(mode=0o755, parents=True)
        reporter.say(f"kiwi left no build root; {root} is an empty directory")
    reporter.say(
        f"the build failed ({failure}); enable_debug is set: kiwi's log is {failure.log_path}, the build root {root} "
        "(an unjailed session sees them at /mnt/image/kiwi.log and /mnt/image/build/image-root)"
    )
    try:
        verdict = sshenv(env, reporter, image_root=root)
    except StageError as exc:
        # The debug shell is a courtesy; the build's own failure stays the job's reason.
        reporter.say(f"the debug environment could not be served: {exc}")
        return
    reporter.say(f"debug session ended ({verdict.value}); the job ends in error, as a failed build does")


def build(env: JobEnvironment, reporter: Reporter, settings: CreateSettings) -> BuildResult:
    try:
        return build_image(env, reporter, settings)
    except BuildFailed as failure:
        if settings.enable_debug:
            debug_shell(env, reporter, failure)
        raise


def package_build(env: JobEnvironment, reporter: Reporter, client: ImsClient | None, result: BuildResult) -> None:
    if result.kind == "tbz":
        assert result.image_root is not None
        package(env, reporter, client, image_root=result.image_root)
        return
    assert result.kernel is not None and result.initrd is not None and result.rootfs is not None
    reporter.status("packaging_artifacts")
    reporter.say(f"kiwi's artifacts: kernel {result.kernel}, initrd {result.initrd}, root file system {result.rootfs}")
    publish(env, reporter, client, rootfs=result.rootfs, kernel=result.kernel, initrd=result.initrd, parameters=None)


def run_create(env: JobEnvironment, reporter: Reporter | None = None, settings: CreateSettings | None = None) -> int:
    client = make_client(env)
    reporter = reporter or Reporter(env.job_id, client)
    try:
        if settings is None:
            try:
                settings = CreateSettings.from_env()
            except JobEnvironmentError as exc:
                reporter.status("error", f"invalid job environment: {exc}")
                return 2
        return _run_steps(env, reporter, client, settings)
    finally:
        if client is not None:
            client.close()


def _run_steps(env: JobEnvironment, reporter: Reporter, client: ImsClient | None, settings: CreateSettings) -> int:
    built: list[BuildResult] = []

    def fetch_step() -> None:
        fetch_recipe(env, reporter, settings)

    def build_step() -> None:
        built.append(build(env, reporter, settings))

    steps: list[tuple[str, Callable[[], None]]] = [
        ("fetch-recipe", fetch_step),
        ("wait-for-repos", lambda: wait_for_repos(env, reporter, settings)),
        ("build-image", build_step),
        ("package", lambda: package_build(env, reporter, client, built[0])),
    ]
    for name, body in steps:
        code = run_stage(name, reporter, body)
        if code != 0:
            return code
    return 0
