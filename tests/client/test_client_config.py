"""Where the client finds IMS and S3: explicit value > environment > config file > default."""

from __future__ import annotations

from pathlib import Path

import certifi
import pytest

from ims.client.config import ConfigError, default_config_path, load_config

FILE = """
api_url = "https://from-file.example/"
token = "file-token"
ca_bundle = "~/ca.pem"
format = "toml"
retries = 7

[s3]
endpoint = "http://file-s3:8333"
access_key = "file-access"
secret_key = "file-secret"
ssl_validate = "/etc/ssl/s3-ca.pem"
boot_images_bucket = "images-bucket"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(FILE)
    return path


def test_defaults_without_anything(tmp_path: Path) -> None:
    config = load_config(env={}, path=tmp_path / "absent.toml")
    assert config.api_url == "http://127.0.0.1:9100"
    assert config.token is None and config.ca_bundle is None and config.format == "table"
    assert config.s3.endpoint == "" and config.s3.ims_bucket == "ims" and config.s3.boot_images_bucket == "boot-images"
    assert config.source is None
    with pytest.raises(ConfigError, match="no S3 endpoint"):
        config.s3.s3_config()


def test_file_values(config_file: Path) -> None:
    config = load_config(env={"HOME": "/home/u"}, path=config_file)
    assert config.api_url == "https://from-file.example"
    assert config.token == "file-token" and config.format == "toml" and config.retries == 7
    assert config.ca_bundle is not None and config.ca_bundle.endswith("/ca.pem") and "~" not in config.ca_bundle
    s3 = config.s3.s3_config()
    assert (s3.endpoint, s3.access_key, s3.secret_key, s3.verify) == (
        "http://file-s3:8333", "file-access", "file-secret", "/etc/ssl/s3-ca.pem"
    )
    assert config.s3.boot_images_bucket == "images-bucket" and config.source == config_file


def test_environment_beats_file_and_options_beat_environment(config_file: Path) -> None:
    env = {
        "IMS_API_URL": "http://env:1",
        "IMS_TOKEN": "env-token",
        "IMS_FORMAT": "json",
        "S3_ENDPOINT": "http://env-s3:1",
        "S3_SSL_VALIDATE": "false",
    }
    config = load_config(env=env, path=config_file)
    assert (config.api_url, config.token, config.format) == ("http://env:1", "env-token", "json")
    assert config.s3.endpoint == "http://env-s3:1" and config.s3.ssl_validate is False
    assert config.s3.access_key == "file-access"  # not overridden, still from the file
    explicit = load_config(api_url="http://opt:2", token="opt-token", output_format="table", env=env, path=config_file)
    assert (explicit.api_url, explicit.token, explicit.format) == ("http://opt:2", "opt-token", "table")


def test_config_path_from_ims_config_and_xdg(tmp_path: Path) -> None:
    assert default_config_path({"IMS_CONFIG": str(tmp_path / "c.toml")}) == tmp_path / "c.toml"
    assert default_config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "ims" / "config.toml"
    assert default_config_path({}).parts[-3:] == (".config", "ims", "config.toml")


def test_secrets_stay_out_of_repr(config_file: Path) -> None:
    config = load_config(env={"IMS_CA_BUNDLE": certifi.where()}, path=config_file)
    text = repr(config) + repr(config.client())
    assert "file-token" not in text and "file-secret" not in text and "file-access" not in text


def test_missing_ca_bundle(config_file: Path) -> None:
    with pytest.raises(ConfigError, match="CA bundle .* does not exist"):
        load_config(env={"IMS_CA_BUNDLE": "/no/such/ca.pem"}, path=config_file).client()


@pytest.mark.parametrize(("content", "message"), [("api_url = ", "cannot read config file"), ("s3 = 1", "must be a table"),
                                                  ("retries = 'many'", "must be a number")])
def test_bad_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(env={}, path=path)
