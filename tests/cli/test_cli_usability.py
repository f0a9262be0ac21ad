"""The rough edges a new admin hit: boolean flags that also take cray's words, choices in help, one-line errors
without library prefixes, a clear line when IMS cannot be reached or its URL ends in /v3, recipe sources
checked up front, tables that fit the terminal (`--wide` for all), and `jobs list` with reason and SSH port."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from tests.cli.conftest import Cli
from tests.cli.test_jobs_cli import broken_image, customize_args, key_pair, register_key  # noqa: F401 - fixture
from tests.stages.kit import KeyPair

from ims.cli.choices import Arch, Distro, RecipeType
from ims.cli.session import cray_bool_words
from ims.domain.schemas import ARCHES, LINUX_DISTRIBUTIONS, RECIPE_TYPES
from ims.embedded.ports import free_port

IMS = str(Path(sys.executable).parent / "ims")


def test_choices_are_the_servers() -> None:
    assert {choice.value for choice in Arch} == set(ARCHES)
    assert {choice.value for choice in Distro} == set(LINUX_DISTRIBUTIONS)
    assert {choice.value for choice in RecipeType} == set(RECIPE_TYPES)


def test_cray_words_become_flags() -> None:
    assert cray_bool_words(["--enable-debug", "True", "--wait", "false", "--x", "true"]) == [
        "--enable-debug",
        "--no-wait",
        "--x",
        "true",
    ]
    assert cray_bool_words(["--require-dkms=FALSE", "--wait", "--", "--wait", "true"]) == [
        "--no-require-dkms",
        "--wait",
        "--",
        "--wait",
        "true",
    ]


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["--require-dkms"], True),
        (["--require-dkms", "true"], True),
        (["--require-dkms", "False"], False),
        (["--require-dkms=false"], False),
        (["--no-require-dkms"], False),
        ([], True),  # the server's default, the original's
    ],
)
def test_boolean_options_are_flags_and_take_cray_words(cli: Cli, words: list[str], expected: bool) -> None:
    recipe = cli.json("recipes", "create", "--name", "flags", "--linux-distribution", "sles15", *words)
    assert recipe["require_dkms"] is expected
    cli.ok("recipes", "delete", recipe["id"])


def test_job_flags_and_wait_true(cli: Cli, key_pair: KeyPair, tmp_path: Path) -> None:  # noqa: F811
    key_id = register_key(cli, key_pair, tmp_path)
    image_id = broken_image(cli, tmp_path)
    job = cli.json(*customize_args(image_id, key_id), "--enable-debug", "--ssh-containers-jail", "true")
    assert job["enable_debug"] is True and job["ssh_containers"][0]["jail"] is True
    # cray's `--wait true` follows the job (this one fails fast: its rootfs is no squashfs).
    result = cli(*customize_args(image_id, key_id), "--wait", "true", "--timeout", "120", "--format", "json")
    assert result.exit_code == 1, result.stderr
    followed = json.loads(result.stdout)
    assert followed["status"] == "error" and f"job {followed['id']}: error" in result.stderr

    listed = cli("jobs", "list", "--status", "error")  # piped: every column
    header = listed.stdout.splitlines()[0].split()
    assert header[:5] == ["ID", "JOB_TYPE", "STATUS", "SSH_PORT", "STATUS_REASON"]
    row = next(line for line in listed.stdout.splitlines() if line.startswith(followed["id"]))
    assert "prepare:" in row  # the status_reason
    jail = cli.json("jobs", "describe", job["id"])
    if jail["ssh_containers"][0].get("connection_info"):
        port = jail["ssh_containers"][0]["connection_info"]["customer_access"]["port"]
        assert str(port) in cli("jobs", "list").stdout


def test_help_lists_the_choices(cli: Cli) -> None:
    env = {**cli.env, "COLUMNS": "200"}
    upload = " ".join(Cli(env)("recipes", "upload", "--help").stdout.split())
    assert "sles12, sles15, centos7 or debian12" in upload and "x86_64 or aarch64" in upload
    assert "kiwi-ng or packer" in upload
    create = " ".join(Cli(env)("jobs", "create", "--help").stdout.split())
    assert "create|customize" in create
    assert "--enable-debug --no-enable-debug On failure" in create  # a flag: no value placeholder


def test_bad_choice_is_a_usage_error(cli: Cli) -> None:
    result = cli("images", "create", "--name", "x", "--arch", "sparc")
    assert result.exit_code == 2
    assert "sparc" in result.stderr


def test_api_url_with_version_is_caught_with_a_hint(cli: Cli) -> None:
    url = cli.env["IMS_API_URL"]
    result = Cli({**cli.env, "IMS_API_URL": f"{url}/v3"})("images", "list")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"ims: the API URL {url}/v3 ends in /v3: give the base URL without it "
        f"(IMS_API_URL={url} or --api-url {url}); the version is added per call"
    )


def test_unreachable_ims_is_one_line_naming_the_url(cli: Cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = Cli({**cli.env, "IMS_RETRIES": "1"})("images", "list", "--api-url", url)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"ims: cannot reach IMS at {url} (")


def test_bad_client_settings_are_usage_errors(cli: Cli) -> None:
    for env, text in (({"IMS_TIMEOUT": "-3"}, "timeout"), ({"IMS_FORMAT": "xml"}, "output format 'xml'")):
        result = Cli({**cli.env, **env})("images", "list")
        assert result.exit_code == 2 and text in result.stderr, result.stderr


def test_recipe_directory_without_config_xml_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "config.sh").write_text("#!/bin/sh\n")
    result = cli("recipes", "upload", "no-config", str(tmp_path), "--distro", "sles15")
    assert result.exit_code == 2
    assert "has no config.xml" in " ".join(result.stderr.split())


def _in_terminal(argv: list[str], env: dict[str, str], columns: int) -> str:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    text = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            text += chunk
        elif process.poll() is not None:
            break
    process.wait(10)
    os.close(master)
    return text.decode(errors="replace").replace("\r\n", "\n")


def test_tables_fit_the_terminal_and_wide_shows_all(cli: Cli) -> None:
    for n in range(3):
        cli.ok("images", "create", "--name", f"a-rather-long-image-name-for-the-table-test-{n}", "--metadata", "k=v")
    env = {k: v for k, v in os.environ.items() if k not in cli.env and k != "COLUMNS"}
    env.update({k: v for k, v in cli.env.items() if v is not None})
    env["TERM"] = "xterm"
    narrow = _in_terminal([IMS, "images", "list"], env, 80)
    lines = [line for line in narrow.splitlines() if line.strip()]
    table = [line for line in lines if not line.startswith("(")]
    assert table[0].startswith("ID") and len(table) >= 4
    assert all(len(line) <= 80 for line in table), narrow
    assert any("--wide shows all" in line for line in lines), narrow

    wide = _in_terminal([IMS, "images", "list", "--wide"], env, 80)
    assert any(len(line) > 80 for line in wide.splitlines())
    assert "--wide shows all" not in wide
    assert "LINK.PATH" in wide.splitlines()[0] and "CREATED" in wide.splitlines()[0]


def test_invalid_server_setting_is_one_line_without_library_prefix(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMS_", "S3_", "LOG_LEVEL"))}
    env.update({"IMS_LOG_LEVEL": "loud", "IMS_DATA_DIR": str(tmp_path)})
    result = subprocess.run([IMS, "serve"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "ims: invalid setting IMS_LOG_LEVEL: unknown log level 'loud'"
