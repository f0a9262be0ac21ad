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
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from ims.stages.create_env import DEFAULT_INTERVAL, DEFAULT_TIMEOUT, CreateSettings
from ims.stages.environment import JobEnvironment
from ims.stages.kiwi_config import DescriptionError, Repository, read_description
from ims.stages.recipe_fetch import recipe_dir
from ims.stages.reporting import Reporter, StageError

log = logging.getLogger(__name__)

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


def probes_for(repositories: list[Repository], say: Callable[[str], None] | None = None) -> list[RepoProbe]:
    say = say or log.info
    probes = []
    for repository in repositories:
        probe = probe_for(repository)
        if probe is None:
            say(f"repository {repository.alias or '-'} ({repository.path}) is not remote; not probed")
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
    verify: bool | ssl.SSLContext = True,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] | None = None,
) -> None:
    """Probe until every repository answered once; raise ReposUnavailable after `timeout` seconds."""
    say = say or log.info
    pending = list(probes)
    started = time.monotonic()
    with httpx.Client(timeout=request_timeout, verify=verify, follow_redirects=True) as http:
        while True:
            pending = [probe for probe in pending if not any(_answers(http, url) for url in probe.urls)]
            if not pending:
                say(f"all {len(probes)} remote repositories answer")
                return
            waited = time.monotonic() - started
            if waited + interval > timeout:
                raise ReposUnavailable(pending, waited)
            names = ", ".join(probe.repository.path for probe in pending)
            say(f"waiting for {len(pending)} repositories ({waited:.0f} s so far): {names}")
            sleep(interval)


def tls_context(extra_ca: str) -> ssl.SSLContext:
    """The system trust store plus the cluster CA when there is one: repositories may be public or local."""
    context = ssl.create_default_context()
    if extra_ca and Path(extra_ca).is_file():
        context.load_verify_locations(cafile=extra_ca)
    return context


def wait_for_repos(env: JobEnvironment, reporter: Reporter, settings: CreateSettings | None = None) -> None:
    """The stage: status `waiting_for_repos`, then wait for every remote repository of the recipe."""
    settings = settings or CreateSettings.from_env()
    reporter.status("waiting_for_repos")
    try:
        description = read_description(recipe_dir(env))
    except DescriptionError as exc:
        raise StageError(str(exc)) from exc
    probes = probes_for(description.repositories, reporter.say)
    if not probes:
        reporter.say("the recipe has no remote repositories to wait for")
        return
    verify = tls_context(env.ca_cert)
    try:
        wait_for_repositories(
            probes,
            timeout=settings.repos_timeout,
            interval=settings.repos_interval,
            verify=verify,
            say=reporter.say,
        )
    except ReposUnavailable as exc:
        raise StageError(str(exc)) from exc
