"""Create stage 1, `fetch-recipe`: download the recipe archive, check it, unpack it safely, template it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ims.stages.create_env import CreateSettings
from ims.stages.download import download
from ims.stages.environment import JobEnvironment
from ims.stages.reporting import Reporter, StageError
from ims.stages.safe_extract import BadArchiveError, UnsafeArchiveError, safe_extract
from ims.stages.templating import TemplatingError, parse_template_dictionary, render_recipe


def recipe_dir(env: JobEnvironment) -> Path:
    return env.image_root_parent / "recipe"


def fetch_recipe(env: JobEnvironment, reporter: Reporter, settings: CreateSettings | None = None) -> Path:
    """Leave the ready-to-build description in `<parent>/recipe` and return that path."""
    settings = settings or CreateSettings.from_env()
    reporter.status("fetching_recipe")
    if not env.download_url:
        raise StageError("DOWNLOAD_URL is not set")
    try:
        values = parse_template_dictionary(settings.template_dictionary)
    except TemplatingError as exc:
        raise StageError(str(exc)) from exc

    parent = env.image_root_parent
    parent.mkdir(parents=True, exist_ok=True)
    target = recipe_dir(env)
    if target.exists():
        # A rerun in the same job directory starts from the archive again, not from a half-templated tree.
        shutil.rmtree(target)
    archive = parent / "recipe.tar.gz"
    verify = env.s3.verify if env.s3 is not None else (env.ca_cert or True)
    try:
        start = time.monotonic()
        md5, size = download(
            env.download_url,
            archive,
            reporter,
            attempts=env.download_attempts,
            retry_seconds=env.download_retry_seconds,
            verify=verify,
        )
        reporter.say(f"downloaded recipe: {size} bytes in {time.monotonic() - start:.2f} s, md5 {md5}")
        if env.download_md5sum and md5 != env.download_md5sum:
            raise StageError(f"md5 mismatch for the recipe archive: expected {env.download_md5sum}, got {md5}")
        try:
            names = safe_extract(archive, target)
        except (UnsafeArchiveError, BadArchiveError) as exc:
            raise StageError(f"recipe archive rejected: {exc}") from exc
        reporter.say(f"extracted {len(names)} archive members into {target}")
    finally:
        archive.unlink(missing_ok=True)

    try:
        rendered = render_recipe(target, values, warn=reporter.say)
    except TemplatingError as exc:
        raise StageError(f"recipe templating failed: {exc}") from exc
    if rendered:
        reporter.say("templated " + ", ".join(path.relative_to(target.resolve()).as_posix() for path in rendered))
    return target
