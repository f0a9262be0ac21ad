"""The README and the docs agree with the code: commands they run, names they use, the client methods they name,
the timestamp format they promise."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.cli.conftest import Cli

from ims.client.http import ImsClient
from ims.client.resources import Ims

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _text(path: Path) -> str:
    return path.read_text()


def test_the_key_named_me_is_created_once() -> None:
    creations = [
        (path.name, line)
        for path in DOCS
        for line in _text(path).splitlines()
        if re.search(r"public-keys create .*--name me\b|\"name\": \\?\"me\\?\"", line)
    ]
    assert len(creations) == 1, creations


def test_apt_sources_is_run_the_same_way_everywhere_and_works() -> None:
    calls = {
        match.group(1).strip()
        for path in DOCS
        for match in re.finditer(r"python -m ims\.stages\.apt_sources([^)`\n]*)", _text(path))
    }
    assert calls == {"bookworm"}, calls
    if not Path("/etc/apt").is_dir():
        pytest.skip("no apt on this machine")
    result = subprocess.run(
        [sys.executable, "-m", "ims.stages.apt_sources", "bookworm"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.startswith(("http://", "https://")), result.stderr


def test_python_client_methods_named_in_the_docs_exist() -> None:
    text = _text(ROOT / "docs/cli.md")
    section = text[text.index("## From Python") :]
    ims = Ims(ImsClient("http://127.0.0.1:9"))
    try:
        named = re.findall(r"\bims\.([a-z_]+)\.([a-z_]+)\(", section)
        assert ("images", "get") in named
        for attribute, method in named:
            assert callable(getattr(getattr(ims, attribute), method, None)), f"ims.{attribute}.{method}"
        rows = re.findall(r"^\| `(ims(?:\.[a-z_]+)*)`[^|]*\| (.+) \|$", section, re.MULTILINE)
        assert len(rows) >= 6
        for attribute, methods in rows:
            target = ims
            for part in attribute.split(".")[1:]:
                target = getattr(target, part)
            for method in re.findall(r"`([a-z_]+)\(", methods):
                assert callable(getattr(target, method, None)), f"{attribute}.{method}"
    finally:
        ims.close()


def test_timestamps_are_as_documented(cli: Cli) -> None:
    assert "2025-01-02T03:04:05.123456" in _text(ROOT / "docs/cli.md")
    before = datetime.now(UTC).replace(tzinfo=None)
    created = cli.json("images", "create", "--name", "timestamp")["created"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?", created), created  # no zone, as the original
    when = datetime.fromisoformat(created)
    assert when.tzinfo is None and abs((when - before).total_seconds()) < 60  # UTC
