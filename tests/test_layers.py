"""The import layering of `ims` is DESIGN.md's "Layers" table: every import of every module is checked.

Every `import` and `from ... import` under src/ims is read with `ast` (those inside functions too, so a lazy
import is no way around the table). A module belongs to the layer of its top package (`ims.api.routers.jobs`
is `api`); an import of a package's module names that module, so the exceptions below can be narrow.
Imports made by name at run time (uvicorn's "ims.api.server:build_app", `python -m ims.stages` in a job's
command line, the `import ims.stages` that ims.jobs.remote_bundle runs in another interpreter to list what
the bundle it ships to a node must hold) are not imports of the importing module and are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ims"

# DESIGN.md, "Layers": package -> the packages of ours it may import (its own always).
TABLE: dict[str, set[str]] = {
    "domain": set(),
    "store": {"domain"},
    "artifacts": {"domain"},
    "tasks": {"store"},
    "jobs": {"domain", "store", "artifacts", "tasks"},
    "services": {"domain", "store", "artifacts", "tasks", "jobs"},
    "api": {"services", "domain"},
    "stages": {"client", "domain"},
    "client": {"domain"},
    "cli": {"client", "services"},
}

# ims.domain is records and rules without I/O, below every layer: the table names it in the rows of all
# layers but tasks and cli, which use only its clock (tasks) and its validators and job statuses (cli).
for _layer, _allowed in TABLE.items():
    if _layer != "domain":
        _allowed.add("domain")

# The parts of ims that are not in the table, and where they stand.
OUTSIDE_TABLE: dict[str, set[str]] = {
    # ims/__init__.py holds only __version__ and imports nothing of ours.
    "ims": set(),
    # The server's settings, read from the environment (pydantic-settings); it imports nothing of ours.
    "settings": set(),
    # SeaweedFS for the embedded dev stack (DESIGN gives the stack to the CLI); its own package so tests can
    # start it without the CLI. It pings the S3 it started with the artifact store.
    "embedded": {"artifacts", "domain"},
    # `python -m ims` is the `ims` command.
    "__main__": {"cli"},
    # ims/recipes holds kiwi recipe directories (data shipped in the wheel), no Python: it has no row.
}
# Cross-cutting: any layer may import these, except the ones named here.
CROSS_CUTTING: dict[str, set[str]] = {
    "ims": set(),
    # domain does no I/O (not even the environment); a stage reads only its own job's environment.
    "settings": {"domain", "stages"},
}
# Which layers may import the embedded dev stack.
EMBEDDED_USERS = {"cli"}

# Deliberate exceptions: (importing module or package, imported module or package) -> why.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("ims.client", "ims.artifacts"): "the ims-python-helper helpers upload with the caller's own S3 credentials, "
    "as the original's do",
    ("ims.cli.serve", "ims.api"): "`ims serve` hosts the HTTP app: it runs ims.api.server.build_app in uvicorn, "
    "and with --workers N readies ims.api.metrics' multiprocess directory",
    ("ims.cli.session", "ims.artifacts"): "it reports the ArtifactError raised by the client's S3 helpers "
    "(the ims.client exception above) as one line",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "ims":
        raise ValueError(f"{module} is not ours")
    if len(parts) == 1:
        return "ims"
    if parts[1] in TABLE or parts[1] in OUTSIDE_TABLE:
        return parts[1]
    raise AssertionError(f"{module}: ims.{parts[1]} is in no layer; add it to DESIGN.md's table and to this test")


def _is_package(module: str) -> bool:
    return (SRC.parent / module.replace(".", "/")).is_dir()


def _is_module(name: str) -> bool:
    return _is_package(name) or (SRC.parent / f"{name.replace('.', '/')}.py").exists()


def imports_of(module: str, source: str) -> list[tuple[int, str]]:
    """(line, module of ours) for every import in `source`, from packages resolved to the modules named."""
    found: list[tuple[int, str]] = []
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if _is_package(base):
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
            else:
                found.append((node.lineno, base))
    ours = []
    for line, name in found:
        if name == "ims" or name.startswith("ims."):
            # `from ims.store import tables` names a module; `from ims.store.db import Database` a class: drop it.
            while name != "ims" and not _is_module(name):
                name = name.rpartition(".")[0]
            ours.append((line, name))
    return ours


def allowed(importer: str, imported: str) -> bool:
    source, target = layer_of(importer), layer_of(imported)
    if source == target:
        return True
    if target in CROSS_CUTTING:
        return source not in CROSS_CUTTING[target]
    if target == "embedded":
        return source in EMBEDDED_USERS
    return target in TABLE.get(source, set()) | OUTSIDE_TABLE.get(source, set())


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def exception_for(importer: str, imported: str) -> tuple[str, str] | None:
    for key in EXCEPTIONS:
        if _within(importer, key[0]) and _within(imported, key[1]):
            return key
    return None


def check(module: str, source: str, used: set[tuple[str, str]] | None = None) -> list[str]:
    """The imports of `module` the layers forbid and no exception covers, as readable lines."""
    problems = []
    for line, imported in imports_of(module, source):
        if allowed(module, imported):
            continue
        key = exception_for(module, imported)
        if key is not None:
            if used is not None:
                used.add(key)
            continue
        problems.append(
            f"{module}:{line} imports {imported} ({layer_of(module)} -> {layer_of(imported)} is not in DESIGN.md's table)"
        )
    return problems


def _sources() -> list[tuple[str, str]]:
    return [(module_name(path), path.read_text()) for path in sorted(SRC.rglob("*.py"))]


def test_every_import_follows_the_layers() -> None:
    used: set[tuple[str, str]] = set()
    problems = [problem for module, source in _sources() for problem in check(module, source, used)]
    assert not problems, "imports across layers:\n" + "\n".join(problems)
    stale = sorted(set(EXCEPTIONS) - used)
    assert not stale, f"exceptions no import needs any more (remove them): {stale}"


def test_every_module_is_in_a_layer() -> None:
    for module, _ in _sources():
        layer_of(module)  # raises for a package in no layer


def test_leaves_import_nothing_of_ours() -> None:
    for module, source in _sources():
        if layer_of(module) in ("domain", "settings", "ims"):
            outside = [name for _, name in imports_of(module, source) if layer_of(name) != layer_of(module)]
            assert not outside, f"{module} imports {outside}"


# DESIGN.md: the API does "no SQL, no boto3"; the domain does no I/O at all.
NO_DATABASE_NOR_S3 = {"sqlalchemy", "alembic", "boto3", "botocore", "s3transfer"}


def test_no_sql_nor_boto3_in_the_api_and_domain() -> None:
    found = []
    for module, source in _sources():
        if layer_of(module) not in ("api", "domain"):
            continue
        for node in ast.walk(ast.parse(source)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            found += [
                f"{module}:{node.lineno} imports {name}" for name in names if name.split(".")[0] in NO_DATABASE_NOR_S3
            ]
    assert not found, "\n".join(found)


def test_the_check_catches_a_forbidden_import() -> None:
    assert check("ims.api.routers.records", "def f():\n    from ims.store import repository\n")
    assert check("ims.api.auth", "from ims.store.job_tokens import lookup\n")
    assert check("ims.stages.build", "import ims.settings\n")
    assert check("ims.domain.jobs", "from ims import settings\n")
    assert check("ims.client.http", "from ims.api import models\n")
    assert not check("ims.api.auth", "from ims.domain.job_tokens import looks_like_job_token\n")
