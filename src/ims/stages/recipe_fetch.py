"""Create stage 1, `fetch-recipe`: download the recipe archive, check it, unpack it safely, template it."""

from __future__ import annotations

import shutil
from pathlib import Path

from ims.stages.create_env import CreateSettings
from ims.stages.download import fetch_job_artifact
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
    try:
        fetch_job_artifact(env, archive, reporter, "recipe archive")
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
