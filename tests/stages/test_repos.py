"""wait-for-repos against a real local HTTP server serving rpm-md and apt layouts; apt source discovery."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ims.embedded.ports import free_port
from ims.stages.apt_sources import AptSourceNotFound, debian_archive_uri
from ims.stages.create_env import CreateSettings
from ims.stages.environment import JobEnvironment
from ims.stages.kiwi_config import DescriptionError, Repository, read_description
from ims.stages.reporting import Reporter, StageError
from ims.stages.repos import ReposUnavailable, probe_for, probes_for, wait_for_repos, wait_for_repositories


class _NoHeadHandler(SimpleHTTPRequestHandler):
    """Like some mirrors: HEAD is not implemented, GET is."""

    def do_HEAD(self) -> None:
        if "/nohead/" in self.path:
            self.send_error(501)
            return
        super().do_HEAD()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def repo_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    for path in (
        "rpm/repodata/repomd.xml",
        "deb/dists/bookworm/InRelease",
        "debrel/dists/stable/Release",
        "flat/Packages.gz",
        "nohead/repodata/repomd.xml",
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("x")
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(_NoHeadHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()
    thread.join(5)


def _repo(path: str, kind: str = "rpm-md", distribution: str = "") -> Repository:
    return Repository(path=path, type=kind, alias="r", distribution=distribution, components="main")


def test_probe_urls_per_type() -> None:
    assert probe_for(_repo("http://h/r/")).urls == ("http://h/r/repodata/repomd.xml",)  # type: ignore[union-attr]
    apt = probe_for(_repo("https://h/debian", "apt-deb", "bookworm"))
    assert apt is not None and apt.urls == (
        "https://h/debian/dists/bookworm/InRelease",
        "https://h/debian/dists/bookworm/Release",
    )
    flat = probe_for(_repo("http://h/flat", "apt-deb"))
    assert flat is not None and flat.urls[0] == "http://h/flat/InRelease"
    for local in ("dir:///srv/repo", "file:///srv/repo", "obs://SUSE:SLE/standard", "this://repo", "/srv/repo"):
        assert probe_for(_repo(local)) is None


def test_all_kinds_answer(repo_server: tuple[str, Path]) -> None:
    url, _ = repo_server
    probes = probes_for(
        [
            _repo(f"{url}/rpm"),
            _repo(f"{url}/deb", "apt-deb", "bookworm"),
            _repo(f"{url}/debrel", "apt-deb", "stable"),  # only Release, no InRelease
            _repo(f"{url}/flat", "apt-deb"),
            _repo(f"{url}/nohead"),  # HEAD answers 501: GET decides
            _repo("dir:///nowhere"),
        ]
    )
    assert len(probes) == 5
    start = time.monotonic()
    wait_for_repositories(probes, timeout=5, interval=0.1)
    assert time.monotonic() - start < 2


def test_missing_repository_times_out_naming_it(repo_server: tuple[str, Path]) -> None:
    url, _ = repo_server
    probes = probes_for([_repo(f"{url}/rpm"), _repo(f"{url}/missing", "apt-deb", "bookworm")])
    said: list[str] = []
    start = time.monotonic()
    with pytest.raises(ReposUnavailable) as caught:
        wait_for_repositories(probes, timeout=1.0, interval=0.2, say=said.append)
    elapsed = time.monotonic() - start
    assert 0.6 < elapsed < 3
    assert f"{url}/missing" in str(caught.value) and f"{url}/rpm" not in str(caught.value)
    assert any("waiting for 1 repositories" in line for line in said)


def test_unreachable_host_times_out() -> None:
    probes = probes_for([_repo(f"http://127.0.0.1:{free_port()}/repo")])
    with pytest.raises(ReposUnavailable):
        wait_for_repositories(probes, timeout=0.5, interval=0.1, request_timeout=0.5)


def test_repository_that_appears_later_is_waited_for(repo_server: tuple[str, Path]) -> None:
    url, root = repo_server
    probes = probes_for([_repo(f"{url}/late", "apt-deb", "bookworm")])
    target = root / "late/dists/bookworm/Release"

    def publish() -> None:
        time.sleep(0.6)
        target.parent.mkdir(parents=True)
        target.write_text("x")

    publisher = threading.Thread(target=publish)
    publisher.start()
    wait_for_repositories(probes, timeout=10, interval=0.2)
    publisher.join()


CONFIG = """<?xml version="1.0"?>
<image schemaversion="8.5" name="t">
  <preferences><packagemanager>apt</packagemanager><type image="tbz"/></preferences>
  {repos}
</image>
"""


def _job(tmp_path: Path, repos: str) -> tuple[JobEnvironment, Reporter, io.StringIO]:
    parent = tmp_path / "job"
    (parent / "recipe").mkdir(parents=True)
    (parent / "recipe/config.xml").write_text(CONFIG.format(repos=repos))
    env = JobEnvironment.from_env({"IMS_JOB_ID": "job-1", "IMAGE_ROOT_PARENT": str(parent)})
    out = io.StringIO()
    return env, Reporter(env.job_id, None, out), out


def test_stage_passes_with_apt_and_rpm_repos(tmp_path: Path, repo_server: tuple[str, Path]) -> None:
    url, _ = repo_server
    env, reporter, out = _job(
        tmp_path,
        f'<repository type="apt-deb" distribution="bookworm" components="main"><source path="{url}/deb"/></repository>'
        f'<repository type="rpm-md"><source path="{url}/rpm"/></repository>',
    )
    wait_for_repos(env, reporter, CreateSettings(repos_timeout=5, repos_interval=0.1))
    assert "job status -> waiting_for_repos" in out.getvalue()
    assert "all 2 remote repositories answer" in out.getvalue()


def test_stage_fails_on_missing_repo(tmp_path: Path, repo_server: tuple[str, Path]) -> None:
    url, _ = repo_server
    env, reporter, _ = _job(tmp_path, f'<repository><source path="{url}/gone"/></repository>')
    with pytest.raises(StageError, match="gone"):
        wait_for_repos(env, reporter, CreateSettings(repos_timeout=0.5, repos_interval=0.1))


def test_stage_passes_with_only_local_repos(tmp_path: Path) -> None:
    """The original failed a recipe without http(s) repositories; that looked accidental."""
    env, reporter, out = _job(
        tmp_path,
        '<repository type="rpm-md"><source path="dir:///srv/repo"/></repository>'
        '<repository type="apt-deb" distribution="x"><source path="file:///srv/apt"/></repository>',
    )
    wait_for_repos(env, reporter, CreateSettings(repos_timeout=1, repos_interval=0.1))
    assert "no remote repositories" in out.getvalue()


def test_stage_fails_without_description(tmp_path: Path) -> None:
    env, reporter, _ = _job(tmp_path, "")
    (env.image_root_parent / "recipe/config.xml").unlink()
    with pytest.raises(StageError, match=r"no config.xml"):
        wait_for_repos(env, reporter, CreateSettings())


def test_description_reader(tmp_path: Path) -> None:
    (tmp_path / "image.kiwi").write_text(
        CONFIG.format(
            repos='<repository type="apt-deb" alias="a" distribution="d"><source path=" http://x "/></repository>'
        ).replace('<type image="tbz"/>', '<type image="tbz"/><type image="kis" primary="true"/>')
    )
    description = read_description(tmp_path)
    assert description.build_type.image == "kis"
    assert description.package_manager == "apt"
    assert description.repositories == [Repository("http://x", "apt-deb", "a", "d", "")]
    (tmp_path / "image.kiwi").write_text("<image><oops></image>")
    with pytest.raises(DescriptionError, match="not well-formed"):
        read_description(tmp_path)


def test_shipped_recipes_parse() -> None:
    import ims

    recipes = Path(ims.__file__).parent / "recipes"
    kis = read_description(recipes / "debian-bookworm")
    assert kis.build_type.image == "kis" and kis.package_manager == "apt"
    assert [r.type for r in kis.repositories] == ["apt-deb"]
    assert read_description(recipes / "debian-bookworm-tbz").build_type.image == "tbz"


# --- the machine's Debian archive, read from apt's own configuration


def test_apt_sources_deb822(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\n"
        "# http://snapshot.example/archive/debian/2025\n"
        "URIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
        "\n"
        "Types: deb\n"
        "URIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\n"
    )
    assert debian_archive_uri("bookworm", tmp_path) == "http://mirror.example/debian"
    assert debian_archive_uri("bookworm-security", tmp_path) == "http://mirror.example/debian-security"
    with pytest.raises(AptSourceNotFound):
        debian_archive_uri("trixie", tmp_path)


def test_apt_sources_disabled_and_source_only_stanzas_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/a.sources").write_text(
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n\n"
        "Types: deb deb-src\nURIs: http://on.example/debian\nSuites: bookworm\n"
    )
    assert debian_archive_uri("bookworm", tmp_path) == "http://on.example/debian"


def test_apt_sources_one_line_format(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://one.example/debian bookworm main\n"
    )
    assert debian_archive_uri("bookworm", tmp_path) == "http://one.example/debian"


def test_apt_sources_of_this_machine() -> None:
    uri = debian_archive_uri()
    assert uri.startswith(("http://", "https://")) and not uri.endswith("/")
