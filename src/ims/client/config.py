"""Where a client finds IMS and S3: explicit values first, then the environment, then a TOML file.

The file is `~/.config/ims/config.toml` (or `$XDG_CONFIG_HOME/ims/config.toml`), or whatever `IMS_CONFIG`
names. Example::

    api_url = "https://ims.example.com"
    token = "..."                 # sent as `Authorization: Bearer ...`
    token_file = "~/.config/cray/tokens/..."  # or a file holding it (plain, or JSON with access_token)
    ca_bundle = "/etc/ssl/certs/site-ca.pem"
    format = "table"              # default output of the `ims` command: table, json or toml

    [s3]                          # only the artifact helpers (import, download, recipe upload) need it
    endpoint = "http://127.0.0.1:8333"
    access_key = "..."
    secret_key = "..."
    ssl_validate = false          # or true, or a CA bundle path
    boot_images_bucket = "boot-images"
    ims_bucket = "ims"
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ims.artifacts.s3 import S3Config
from ims.client.http import ImsClient, RetryPolicy
from ims.settings import parse_ssl_validate

DEFAULT_API_URL = "http://127.0.0.1:9100"
CONFIG_ENV = "IMS_CONFIG"

# Setting name in the file -> environment variable that overrides it.
_TOP_ENV = {
    "api_url": "IMS_API_URL",
    "token": "IMS_TOKEN",
    "token_file": "IMS_TOKEN_FILE",
    "ca_bundle": "IMS_CA_BUNDLE",
    "format": "IMS_FORMAT",
    "retries": "IMS_RETRIES",
    "timeout": "IMS_TIMEOUT",
}
_S3_ENV = {
    "endpoint": "S3_ENDPOINT",
    "access_key": "S3_ACCESS_KEY",
    "secret_key": "S3_SECRET_KEY",
    "ssl_validate": "S3_SSL_VALIDATE",
    "boot_images_bucket": "S3_BOOT_IMAGES_BUCKET",
    "ims_bucket": "S3_IMS_BUCKET",
}


class ConfigError(Exception):
    """The configuration cannot be used as it is (unreadable file, missing S3 endpoint, bad number)."""


@dataclass(frozen=True)
class S3Settings:
    endpoint: str = ""
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    ssl_validate: bool | str = False
    boot_images_bucket: str = "boot-images"
    ims_bucket: str = "ims"

    def s3_config(self) -> S3Config:
        if not self.endpoint:
            raise ConfigError("no S3 endpoint: set S3_ENDPOINT (and S3_ACCESS_KEY, S3_SECRET_KEY) or [s3] in the config")
        return S3Config(self.endpoint, self.access_key, self.secret_key, verify=self.ssl_validate)


@dataclass(frozen=True)
class ClientConfig:
    api_url: str = DEFAULT_API_URL
    token: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None
    format: str = "table"
    retries: int = 4
    timeout: float = 30.0
    s3: S3Settings = field(default_factory=S3Settings)
    source: Path | None = None

    def client(self) -> ImsClient:
        """A v3 client; a few quick retries, since a person is usually waiting on the other end."""
        if self.ca_bundle and not Path(self.ca_bundle).is_file():
            raise ConfigError(f"CA bundle {self.ca_bundle} does not exist")
        return ImsClient(
            self.api_url,
            token=self.token,
            verify=self.ca_bundle or True,
            timeout=self.timeout,
            retry=RetryPolicy(attempts=max(1, self.retries), backoff=0.5, max_sleep=5.0),
        )


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "ims" / "config.toml"


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc


def load_config(
    *,
    api_url: str | None = None,
    token: str | None = None,
    ca_bundle: str | None = None,
    output_format: str | None = None,
    env: Mapping[str, str] | None = None,
    path: Path | None = None,
    token_file: str | None = None,
) -> ClientConfig:
    env = os.environ if env is None else env
    path = path or default_config_path(env)
    data = read_config_file(path)
    s3_data = data.get("s3", {})
    if not isinstance(s3_data, dict):
        raise ConfigError(f"{path}: [s3] must be a table")

    explicit = {"api_url": api_url, "token": token, "ca_bundle": ca_bundle, "format": output_format}
    top = {name: _pick(explicit.get(name), env.get(var), data.get(name)) for name, var in _TOP_ENV.items()}
    # The first of: --token, --token-file, IMS_TOKEN, IMS_TOKEN_FILE, the file's token, the file's token_file.
    # A token file is read by every process anew, so a refreshed token is used by the next command.
    candidates = [(token, False), (token_file, True), (env.get("IMS_TOKEN"), False),
                  (env.get("IMS_TOKEN_FILE"), True), (data.get("token"), False), (data.get("token_file"), True)]
    chosen = next(((value, is_file) for value, is_file in candidates if value), (None, False))
    top["token"] = read_token_file(str(chosen[0])) if chosen[1] else chosen[0]
    s3 = {name: _pick(None, env.get(var), s3_data.get(name)) for name, var in _S3_ENV.items()}

    s3_settings = S3Settings(
        endpoint=str(s3["endpoint"] or ""),
        access_key=str(s3["access_key"] or ""),
        secret_key=str(s3["secret_key"] or ""),
        ssl_validate=parse_ssl_validate(s3["ssl_validate"]) if s3["ssl_validate"] is not None else False,
        boot_images_bucket=str(s3["boot_images_bucket"] or "boot-images"),
        ims_bucket=str(s3["ims_bucket"] or "ims"),
    )
    return ClientConfig(
        api_url=str(top["api_url"] or DEFAULT_API_URL).rstrip("/"),
        token=str(top["token"]) if top["token"] else None,
        ca_bundle=str(Path(str(top["ca_bundle"])).expanduser()) if top["ca_bundle"] else None,
        format=str(top["format"] or "table"),
        retries=_number(int, "retries", top["retries"], 4),
        timeout=_number(float, "timeout", top["timeout"], 30.0),
        s3=s3_settings,
        source=path if data else None,
    )


def read_token_file(path: str) -> str:
    """A bearer token from a file: the token itself, or JSON with `access_token` (as `cray --token` reads)."""
    target = Path(path).expanduser()
    try:
        text = target.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read token file {target}: {getattr(exc, 'strerror', None) or exc}") from None
    if text.startswith("{"):
        try:
            value = json.loads(text).get("access_token")
        except (ValueError, AttributeError):
            value = None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"token file {target} is JSON without an access_token")
        text = value.strip()
    if not text or any(ch.isspace() for ch in text):
        raise ConfigError(f"token file {target} does not hold one token")
    return text


def _pick(*values: Any) -> Any:
    for value in values:
        if value is not None and value != "":
            return value
    return None


def _number(kind: type[int] | type[float], name: str, value: Any, default: int | float) -> Any:
    if value is None:
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, not {value!r}") from None
