"""Exit codes and error lines: 1 with one readable line when the server says no, 2 for usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.cli.conftest import Cli
from tests.support.servers import ImsServer

from ims.embedded.ports import free_port


def test_not_found_is_one_line_and_exit_1(cli: Cli) -> None:
    result = cli("images", "describe", "no-such-image")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ims: 404 Not Found (GET /v3/images/no-such-image): Requested resource does not exist")


def test_validation_errors_are_listed_on_the_line(cli: Cli) -> None:
    # A rule only the server checks (the CLI checks public keys itself, before sending).
    result = cli("recipes", "create", "--name", "x", "--linux-distribution", "sles15", "--link-path", "/etc/passwd")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "422 Unprocessable Entity" in line and "link" in line
    assert "Value error" not in line  # no library prefixes


def test_a_bad_public_key_is_refused_before_sending(cli: Cli, tmp_path: Path) -> None:
    key = tmp_path / "not-a-key.pub"
    key.write_text("ssh-ed25519 not-base64-at-all me@host")
    result = cli("public-keys", "create", "--name", "x", "--public-key", str(key))
    assert result.exit_code == 2
    assert "Value error" not in result.stderr


def test_conflicting_link_is_exit_1(cli: Cli) -> None:
    created = cli.json("recipes", "create", "--name", "conflict", "--linux-distribution", "sles15")
    result = cli("recipes", "update", created["id"], "--link-path", "s3://ims/recipes/nothing-here/recipe.tar.gz")
    assert result.exit_code == 1
    assert result.stderr.startswith("ims: 422 Unprocessable Entity") and "cannot be validated" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["images", "describe"],  # missing argument
        ["images", "list", "--format", "yaml"],  # bad choice
        ["jobs", "create", "--job-type", "build"],  # bad enum
        ["jobs", "deleteall", "--age", "xyz"],  # an age the server would read as "everything"
        ["jobs", "deleteall", "--status", "finished"],
        ["recipes", "create", "--name", "x", "--linux-distribution", "sles15", "--template", "novalue"],
        ["recipes", "create", "--name", "x", "--linux-distribution", "sles15", "--require-dkms", "maybe"],
        ["images", "update", "some-id", "--metadata-key", "k"],
        ["images", "update", "some-id", "--link-etag", "abc"],
        ["no-such-group"],
    ],
)
def test_usage_errors_exit_2(cli: Cli, args: list[str]) -> None:
    assert cli(*args).exit_code == 2


def test_unreadable_config_file_is_exit_2(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("api_url = \n")
    result = Cli({**cli.env, "IMS_CONFIG": str(config)})("images", "list")
    assert result.exit_code == 2 and "cannot read config file" in result.stderr


def test_unreachable_server_is_exit_1(cli: Cli) -> None:
    result = Cli({**cli.env, "IMS_API_URL": f"http://127.0.0.1:{free_port()}", "IMS_RETRIES": "1"})("images", "list")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("ims: cannot reach IMS")


def test_missing_s3_settings_is_exit_2(cli: Cli, tmp_path: Path) -> None:
    env = {**cli.env, "S3_ENDPOINT": None}
    (tmp_path / "f").write_bytes(b"x")
    f = str(tmp_path / "f")
    result = Cli(env)("images", "import", "n", "--rootfs", f, "--kernel", f, "--initrd", f)
    assert result.exit_code == 2 and "no S3 endpoint" in result.stderr


def test_real_process_exit_codes_and_token_kept_out_of_output(ims_server: ImsServer, cli: Cli) -> None:
    """The installed entry point as a user runs it: `python -m ims ...` in a subprocess."""
    secret = "s3cr3t-token-value"
    env = {key: value for key, value in os.environ.items() if key not in cli.env}
    env.update({key: value for key, value in cli.env.items() if value is not None})
    env["IMS_TOKEN"] = secret

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ims", *args], env=env, capture_output=True, text=True, timeout=60)

    listed = run("images", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert isinstance(json.loads(listed.stdout), list)
    missing = run("public-keys", "describe", "nope")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    usage = run("public-keys", "describe")
    assert usage.returncode == 2
    for result in (listed, missing, usage):
        assert secret not in result.stdout + result.stderr


def _leaf_commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found.extend(_leaf_commands(command, (*path, name)))
        else:
            found.append((*path, name))
    return found


def test_every_client_command_has_help_with_an_example(cli: Cli) -> None:
    import typer

    from ims.cli.main import app

    root = typer.main.get_command(app)
    client_groups = {"public-keys", "recipes", "images", "jobs", "deleted", "remote-build-nodes"}
    leaves = [path for path in _leaf_commands(root) if path[0] in client_groups]
    assert len(leaves) >= 40
    for path in leaves:
        result = cli(*path, "--help")
        assert result.exit_code == 0, path
        assert "Example: ims " in result.stdout, path
