"""Settings: the original's names are read, and a bad value stops start-up with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys

from ims.settings import load_settings


def test_original_names_are_read(monkeypatch) -> None:
    monkeypatch.setenv("S3_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("S3_SSL_VALIDATE", "off")
    monkeypatch.setenv("S3_BOOT_IMAGES_BUCKET", "boots")
    monkeypatch.setenv("DEFAULT_IMS_IMAGE_SIZE", "15")
    monkeypatch.setenv("JOB_ENABLE_DKMS", "false")
    settings = load_settings()
    assert settings.s3_endpoint == "http://127.0.0.1:1"
    assert settings.s3_ssl_validate is False
    assert settings.s3_boot_images_bucket == "boots"
    assert settings.default_ims_image_size == 15
    assert settings.dkms_enabled_globally is False


def test_ssl_validate_keeps_a_ca_bundle_path(monkeypatch) -> None:
    monkeypatch.setenv("S3_SSL_VALIDATE", "/etc/ssl/certs/ca-certificates.crt")
    assert load_settings().s3_ssl_validate == "/etc/ssl/certs/ca-certificates.crt"


def test_invalid_setting_stops_serve_with_one_line(tmp_path) -> None:
    env = dict(os.environ, IMS_PORT="not-a-port", IMS_DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "ims", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and "IMS_PORT" in lines[0], result.stderr


def test_unreachable_database_stops_serve_with_one_line(tmp_path) -> None:
    env = dict(
        os.environ,
        IMS_DATA_DIR=str(tmp_path),
        IMS_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/ims",
        S3_ENDPOINT="http://127.0.0.1:1",
    )
    result = subprocess.run(
        [sys.executable, "-m", "ims", "serve", "--port", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ims: the database") and "not usable" in last, result.stderr
