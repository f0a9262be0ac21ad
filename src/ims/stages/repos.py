"""Stage `wait-for-repos`: wait until every remote package repository of the recipe answers.

What is probed, per kiwi repository type:
- `rpm-md` (kiwi's default type): `<path>/repodata/repomd.xml`;
- `apt-deb` with a `distribution`: `<path>/dists/<distribution>/InRelease`, else `.../Release`;
  a flat apt repository (no distribution): `<path>/InRelease`, `Release` or `Packages(.gz)`;
- any other type: the path itself.
Only http(s) paths are probed. Local sources (`dir://`, `file://`, `obs://`, `this://`, `iso://`) cannot be
checked from here and kiwi reports them itself, so a recipe with none left to probe passes; the original
failed such recipes, which looks accidental.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from ims.stages.kiwi_config import Repository

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 500.0
DEFAULT_INTERVAL = 10.0
REQUEST_TIMEOUT = 10.0


class ReposUnavailable(RuntimeError):
    def __init__(self, pending: list[RepoProbe], waited: float) -> None:
        names = ", ".join(probe.repository.path for probe in pending)
        super().__init__(f"repositories not available after {waited:.0f} s: {names}")
        self.pending = pending


@dataclass(frozen=True)
class RepoProbe:
    repository: Repository
    urls: tuple[str, ...]  # any one answering counts


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])


def probe_for(repository: Repository) -> RepoProbe | None:
    """The URLs that prove `repository` is served, or None when it is not a remote one."""
    path = repository.path
    if not path.lower().startswith(("http://", "https://")):
        return None
    kind = repository.type
    if kind == "apt-deb":
        if repository.distribution and repository.distribution not in ("/", "./"):
            dist = _join(path, "dists", repository.distribution)
            urls: tuple[str, ...] = (_join(dist, "InRelease"), _join(dist, "Release"))
        else:
            urls = tuple(_join(path, name) for name in ("InRelease", "Release", "Packages.gz", "Packages"))
    elif kind == "rpm-md":
        urls = (_join(path, "repodata", "repomd.xml"),)
    else:
        urls = (path,)
    return RepoProbe(repository, urls)


def probes_for(repositories: list[Repository]) -> list[RepoProbe]:
    probes = []
    for repository in repositories:
        probe = probe_for(repository)
        if probe is None:
            log.info("repository %s (%s) is not remote; not probed", repository.alias or "-", repository.path)
        else:
            probes.append(probe)
    return probes


def _answers(http: httpx.Client, url: str) -> bool:
    try:
        response = http.head(url)
        if response.status_code in (405, 501):
            # Some servers do not implement HEAD; a streamed GET proves the same without the body.
            with http.stream("GET", url) as streamed:
                return streamed.is_success
        return response.is_success
    except httpx.HTTPError as error:
        log.debug("probe %s: %s", url, error)
        return False


def wait_for_repositories(
    probes: list[RepoProbe],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    request_timeout: float = REQUEST_TIMEOUT,
    verify: bool | str = True,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Probe until every repository answered once; raise ReposUnavailable after `timeout` seconds."""
    pending = list(probes)
    started = time.monotonic()
    with httpx.Client(timeout=request_timeout, verify=verify, follow_redirects=True) as http:
        while True:
            pending = [probe for probe in pending if not any(_answers(http, url) for url in probe.urls)]
            if not pending:
                log.info("all %d remote repositories answer", len(probes))
                return
            waited = time.monotonic() - started
            if waited + interval > timeout:
                raise ReposUnavailable(pending, waited)
            log.info(
                "waiting for %d repositories (%.0f s so far): %s",
                len(pending),
                waited,
                ", ".join(probe.repository.path for probe in pending),
            )
            sleep(interval)
