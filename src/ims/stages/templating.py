"""Recipe templating: render the files a recipe lists in `.ims_recipe_template.yaml` with Jinja2.

Rules (the original's):
- values come from the recipe record's `template_dictionary` (a list of `{key, value}`), handed to the job
  as one JSON object;
- `.ims_recipe_template.yaml` holds `template_files: [...]`, paths relative to the recipe directory; each
  must exist and stay inside that directory;
- a recipe that lists template files but gets no values is an error; values but no template file is only
  worth a warning;
- each file is replaced in place and keeps its mode.

Decisions of ours:
- Undefined variables render empty, as in the original (recipes written for it must keep working), but
  each one is named in a warning: an empty repository path otherwise surfaces minutes later as a puzzling
  kiwi error. `strict=True` turns them into errors.
- Templates are user input rendered by a root process, so they get Jinja2's sandbox (no attribute walks
  to Python internals).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

TEMPLATE_CONFIG = ".ims_recipe_template.yaml"

log = logging.getLogger(__name__)


class TemplatingError(ValueError):
    pass


def dictionary_from_records(records: list[Mapping[str, Any]] | None) -> dict[str, Any]:
    """The recipe record's `[{key, value}, ...]` as a mapping (later keys win, as a dict build would)."""
    values: dict[str, Any] = {}
    for record in records or []:
        values[str(record["key"])] = record.get("value")
    return values


def parse_template_dictionary(text: str | None) -> dict[str, Any]:
    """Values as handed to the job: a JSON (or YAML) object, or the record's list form; empty → {}."""
    if text is None or not text.strip():
        return {}
    try:
        data = yaml.safe_load(text)  # JSON is YAML, so this reads both
    except yaml.YAMLError as error:
        raise TemplatingError(f"template dictionary is neither JSON nor YAML: {error}") from error
    if data is None:
        return {}
    if isinstance(data, list):
        if not all(isinstance(item, Mapping) and "key" in item for item in data):
            raise TemplatingError("template dictionary list entries must be objects with 'key' and 'value'")
        return dictionary_from_records(data)
    if not isinstance(data, Mapping):
        raise TemplatingError("template dictionary must be an object of key/value pairs")
    return {str(key): value for key, value in data.items()}


def dump_template_dictionary(values: Mapping[str, Any]) -> str:
    """The JSON form a runner passes in TEMPLATE_DICTIONARY."""
    return json.dumps(dict(values), sort_keys=True)


def listed_template_files(recipe_dir: Path) -> list[Path] | None:
    """Files the recipe wants rendered, checked; None when it has no `.ims_recipe_template.yaml`."""
    config = recipe_dir / TEMPLATE_CONFIG
    if not config.is_file():
        return None
    try:
        data = yaml.safe_load(config.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise TemplatingError(f"{TEMPLATE_CONFIG} is not valid YAML: {error}") from error
    if data is None:
        return []
    if not isinstance(data, Mapping):
        raise TemplatingError(f"{TEMPLATE_CONFIG} must be a mapping with 'template_files'")
    names = data.get("template_files") or []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise TemplatingError(f"{TEMPLATE_CONFIG}: 'template_files' must be a list of paths")
    root = recipe_dir.resolve()
    files: list[Path] = []
    for name in names:
        path = (root / name).resolve()
        if not path.is_relative_to(root) or path == root:
            raise TemplatingError(f"template file {name!r} is outside the recipe directory")
        if not path.is_file():
            raise TemplatingError(f"template file {name!r} does not exist in the recipe")
        files.append(path)
    return files


def _environment(recipe_dir: Path, strict: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(recipe_dir)),
        undefined=jinja2.StrictUndefined if strict else jinja2.Undefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - recipes are XML/shell, not HTML; escaping would corrupt them
    )


def _replace_keeping_mode(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o7777
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def render_recipe(
    recipe_dir: Path,
    values: Mapping[str, Any],
    *,
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
) -> list[Path]:
    """Apply the recipe's templating in place; return the files rendered. Warnings go to `warn`."""
    warn = warn or log.warning
    files = listed_template_files(recipe_dir)
    if files is None:
        if values:
            warn(f"warning: template dictionary given but the recipe has no {TEMPLATE_CONFIG}; nothing templated")
        return []
    if not files:
        return []
    if not values:
        raise TemplatingError(
            f"the recipe lists template files in {TEMPLATE_CONFIG} but the recipe's template_dictionary is empty"
        )
    root = recipe_dir.resolve()
    env = _environment(root, strict)
    for path in files:
        name = path.relative_to(root).as_posix()
        try:
            source = path.read_text()
            missing = sorted(meta.find_undeclared_variables(env.parse(source)) - set(values))
            if missing:
                warn(
                    f"warning: template {name} uses variables missing from the template dictionary: "
                    + ", ".join(missing)
                )
            rendered = env.from_string(source).render(dict(values))
        except UnicodeDecodeError as error:
            raise TemplatingError(f"template file {name!r} is not text: {error}") from error
        except jinja2.TemplateError as error:
            raise TemplatingError(f"template file {name!r}: {error}") from error
        _replace_keeping_mode(path, rendered)
    return files
