"""Find the Debian archive URI this machine's apt already uses, for filling recipe templates.

The shipped recipes carry no mirror: whoever uploads them (CLI, tests) reads it here at run time and passes
it in the recipe's template_dictionary.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

APT_ROOT = Path("/etc/apt")


class AptSourceNotFound(LookupError):
    pass


def _deb822_stanzas(text: str) -> Iterable[dict[str, str]]:
    """Stanzas of a deb822 .sources file; comment lines are skipped, continuation lines joined."""
    stanza: dict[str, str] = {}
    key = ""
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanza:
                yield stanza
            stanza, key = {}, ""
            continue
        if raw[0] in " \t" and key:
            stanza[key] = f"{stanza[key]} {raw.strip()}"
            continue
        name, sep, value = raw.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        stanza[key] = value.strip()
    if stanza:
        yield stanza


def _from_deb822(text: str, suite: str) -> str | None:
    for stanza in _deb822_stanzas(text):
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in stanza.get("types", "").split():
            continue
        if suite not in stanza.get("suites", "").split():
            continue
        uris = stanza.get("uris", "").split()
        if uris:
            return uris[0]
    return None


def _from_one_line(text: str, suite: str) -> str | None:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        words = line.split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        # Options such as [arch=amd64 signed-by=...] come before the URI.
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2 and words[1] == suite:
            return words[0]
    return None


def debian_archive_uri(suite: str = "bookworm", apt_root: Path = APT_ROOT) -> str:
    """The URI of the first enabled `deb` source for `suite`, without a trailing slash."""
    candidates: list[tuple[Path, bool]] = []
    parts = apt_root / "sources.list.d"
    if parts.is_dir():
        candidates += [(path, True) for path in sorted(parts.glob("*.sources"))]
    if (apt_root / "sources.list").is_file():
        candidates.append((apt_root / "sources.list", False))
    if parts.is_dir():
        candidates += [(path, False) for path in sorted(parts.glob("*.list"))]
    for path, deb822 in candidates:
        text = path.read_text(errors="replace")
        uri = _from_deb822(text, suite) if deb822 else _from_one_line(text, suite)
        if uri:
            return uri.rstrip("/")
    raise AptSourceNotFound(f"no apt source for suite {suite!r} under {apt_root}")


def main(argv: list[str] | None = None) -> int:
    """`python -m ims.stages.apt_sources [SUITE]`: print the archive URI, e.g. for `--template debian_mirror=...`."""
    args = sys.argv[1:] if argv is None else argv
    try:
        print(debian_archive_uri(args[0] if args else "bookworm"))
    except AptSourceNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
