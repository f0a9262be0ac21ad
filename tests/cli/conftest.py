"""Run the `ims` command in-process (typer's CliRunner) against the session's `ims serve` and SeaweedFS."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from tests.support.servers import ImsServer
from typer.testing import CliRunner, Result

from ims.cli.main import app


@dataclass(frozen=True)
class Cli:
    env: dict[str, str | None]

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(app, list(args), env=self.env, input=input)

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self(*args, input=input)
        assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--format", "json").stdout)

    def against(self, server: ImsServer) -> Cli:
        return replace(self, env={**self.env, "IMS_API_URL": server.url})


def cli_env(api_url: str, s3_env: dict[str, str], config: Path) -> dict[str, str | None]:
    # The user's own environment and config file must not leak into the tests.
    return {
        "IMS_API_URL": api_url,
        "IMS_CONFIG": str(config),
        "IMS_TOKEN": None,
        "IMS_FORMAT": None,
        "IMS_CA_BUNDLE": None,
        "IMS_RETRIES": "2",
        **s3_env,
    }


@pytest.fixture(scope="session")
def cli(ims_server: ImsServer, s3_env: dict[str, str], work_root: Path) -> Cli:
    return Cli(cli_env(ims_server.url, s3_env, work_root / "no-such-ims-config.toml"))


def ids(records: Sequence[dict[str, Any]]) -> set[str]:
    return {str(record.get("id")) for record in records}
