"""IMS_AUTH=oidc against a running `ims serve`: bearer JWTs from a local issuer the tests run themselves
(tests/support/jwks.py), checked against its JWKS; roles admin and read-only; our client and `ims` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from tests.support.jwks import LocalIssuer, SigningKey, make_key
from tests.support.servers import ImsServer, start_ims_server

from ims.client.http import ImsApiError, ImsClient

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@ims"


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    local = LocalIssuer().start()
    local.add_key("RS256")
    yield local
    local.stop()


@pytest.fixture(scope="module")
def oidc_server(work_root: Path, s3_env: dict[str, str], issuer: LocalIssuer) -> Iterator[ImsServer]:
    env = {
        "IMS_AUTH": "oidc",
        "IMS_OIDC_ISSUER": issuer.issuer,  # the JWKS URL comes from its discovery document
        "IMS_OIDC_AUDIENCE": "ims,shasta",
        "IMS_OIDC_CLOCK_SKEW": "30",
        "IMS_OIDC_JWKS_REFRESH_SECONDS": "2",
    }
    # One server process, so that the JWKS fetches the tests count are those of one cache.
    server = start_ims_server(work_root / f"ims-oidc-{uuid.uuid4().hex[:8]}", s3_env, env, args=["--workers", "1"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rsa_key(issuer: LocalIssuer) -> SigningKey:
    return next(iter(issuer.keys.values()))


@pytest.fixture(scope="module")
def admin_token(issuer: LocalIssuer, rsa_key: SigningKey) -> str:
    return issuer.token(rsa_key, roles=["admin"], subject="alice")


def _get(server: ImsServer, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(kwargs.pop("method", "GET"), server.url + path, headers=headers, timeout=30, **kwargs)


def _assert_401(response: httpx.Response, words: str = "") -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith('Bearer realm="ims"')
    body = response.json()
    assert body["status"] == 401 and body["title"] == "Unauthorized"
    assert words in body["detail"], body


def test_no_token_is_401_with_a_challenge(oidc_server: ImsServer) -> None:
    for path in ("/v3/images", "/images", "/v2/recipes", "/v3/jobs"):
        response = _get(oidc_server, path)
        _assert_401(response, "Authentication is required")
        assert response.headers["www-authenticate"] == 'Bearer realm="ims"'
    response = _get(oidc_server, "/v3/public-keys", method="POST", json={"name": "x", "public_key": PUBLIC_KEY})
    _assert_401(response)


def test_health_and_version_stay_anonymous(oidc_server: ImsServer) -> None:
    for path in ("/healthz/live", "/healthz/ready", "/version"):
        assert _get(oidc_server, path).status_code == 200, path


def test_admin_may_do_everything(oidc_server: ImsServer, admin_token: str) -> None:
    assert _get(oidc_server, "/v3/images", admin_token).status_code == 200
    created = _get(
        oidc_server, "/v3/public-keys", admin_token, method="POST", json={"name": "admin-key", "public_key": PUBLIC_KEY}
    )
    assert created.status_code == 201, created.text
    key_id = created.json()["id"]
    assert _get(oidc_server, f"/v2/public-keys/{key_id}", admin_token).status_code == 200
    assert _get(oidc_server, f"/v3/public-keys/{key_id}", admin_token, method="DELETE").status_code == 204
    # One audit line per write, naming who, what and which record; never the token.
    log = _wait_for_log(oidc_server, f"id={key_id} status=204")
    assert f"audit who=user:alice(admin) method=POST path=/v3/public-keys id={key_id} status=201" in log
    assert f"audit who=user:alice(admin) method=DELETE path=/v3/public-keys/{key_id} id={key_id} status=204" in log
    assert admin_token not in log and admin_token.split(".")[2] not in log


def test_es256_tokens_are_accepted(oidc_server: ImsServer, issuer: LocalIssuer) -> None:
    ec_key = issuer.add_key("ES256")  # not yet in the JWKS the server fetched: an unknown kid makes it fetch again
    time.sleep(2.1)  # past the refetch rate limit
    token = issuer.token(ec_key, roles=["admin"], subject="bob")
    assert _get(oidc_server, "/v3/recipes", token).status_code == 200


def test_bad_tokens_are_401(oidc_server: ImsServer, issuer: LocalIssuer, rsa_key: SigningKey) -> None:
    stranger = make_key("RS256", kid=rsa_key.kid)  # same kid, another private key: the signature fails
    cases = {
        "bad signature": (issuer.token(stranger, roles=["admin"]), "signature"),
        "expired": (issuer.token(rsa_key, roles=["admin"], expires_in=-120), "expired"),
        "wrong audience": (issuer.token(rsa_key, roles=["admin"], audience="other-service"), "audience"),
        "wrong issuer": (issuer.token(rsa_key, roles=["admin"], issuer="http://elsewhere/realms/x"), "issuer"),
        "not yet valid": (issuer.token(rsa_key, roles=["admin"], not_before=300), "not valid yet"),
        "not a JWT": ("garbage.token.here", "not a JWT"),
        "HS256": (
            jwt.encode(
                {"iss": issuer.issuer, "aud": "ims", "exp": time.time() + 60, "realm_access": {"roles": ["admin"]}},
                "secret-of-sufficient-length-for-hs256!",
                algorithm="HS256",
                headers={"kid": rsa_key.kid},
            ),
            "algorithm",
        ),
    }
    for name, (token, words) in cases.items():
        response = _get(oidc_server, "/v3/images", token)
        _assert_401(response, words)
        assert 'error="invalid_token"' in response.headers["www-authenticate"], name
        assert (
            _get(
                oidc_server, "/v3/public-keys", token, method="POST", json={"name": "x", "public_key": PUBLIC_KEY}
            ).status_code
            == 401
        ), name
    # Basic credentials are not a bearer token.
    _assert_401(httpx.get(oidc_server.url + "/v3/images", auth=("admin", "admin")), "Only bearer tokens")


def test_clock_skew_is_allowed(oidc_server: ImsServer, issuer: LocalIssuer, rsa_key: SigningKey) -> None:
    token = issuer.token(rsa_key, roles=["admin"], expires_in=-10)  # expired 10 s ago, within the 30 s skew
    assert _get(oidc_server, "/v3/images", token).status_code == 200


def test_second_audience_is_accepted(oidc_server: ImsServer, issuer: LocalIssuer, rsa_key: SigningKey) -> None:
    token = issuer.token(rsa_key, roles=["admin"], audience=["account", "shasta"])
    assert _get(oidc_server, "/v3/images", token).status_code == 200


def test_read_only_may_only_read(
    oidc_server: ImsServer, issuer: LocalIssuer, rsa_key: SigningKey, admin_token: str
) -> None:
    reader = issuer.token(rsa_key, roles=["read-only"], subject="reader")
    created = _get(oidc_server, "/v3/images", admin_token, method="POST", json={"name": "ro-target"})
    image_id = created.json()["id"]
    assert _get(oidc_server, "/v3/images", reader).status_code == 200
    assert _get(oidc_server, f"/v3/images/{image_id}", reader).status_code == 200
    assert _get(oidc_server, f"/images/{image_id}", reader, method="HEAD").status_code == 200
    writes = [
        ("POST", "/v3/images", {"name": "nope"}),
        ("PATCH", f"/v3/images/{image_id}", {"name": "renamed"}),
        ("DELETE", f"/v3/images/{image_id}", None),
        ("DELETE", "/v3/jobs", None),
        ("POST", "/v2/public-keys", {"name": "x", "public_key": PUBLIC_KEY}),
    ]
    for method, path, body in writes:
        response = _get(oidc_server, path, reader, method=method, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["title"] == "Forbidden" and "read-only" in response.json()["detail"]
    assert _get(oidc_server, f"/v3/images/{image_id}", admin_token).json()["name"] == "ro-target"
    assert "audit who=user:reader(read-only) method=DELETE path=/v3/jobs id=- status=403" in _wait_for_log(
        oidc_server, "method=DELETE path=/v3/jobs id=- status=403"
    )


def test_a_token_without_an_ims_role_is_403(oidc_server: ImsServer, issuer: LocalIssuer, rsa_key: SigningKey) -> None:
    token = issuer.token(rsa_key, roles=["offline_access"])
    response = _get(oidc_server, "/v3/images", token)
    assert response.status_code == 403 and "neither IMS role" in response.json()["detail"]


@pytest.mark.slow
def test_key_rotation_and_unknown_kids(oidc_server: ImsServer, issuer: LocalIssuer, admin_token: str) -> None:
    new_key = make_key("RS256")
    token = issuer.token(new_key, roles=["admin"])
    time.sleep(2.1)
    before = issuer.jwks_fetches
    _assert_401(_get(oidc_server, "/v3/images", token), "signing key")  # unknown kid: fetched, still unknown
    for _ in range(5):  # more unknown kids within the rate limit do not make IMS fetch again
        _assert_401(_get(oidc_server, "/v3/images", token), "signing key")
    assert issuer.jwks_fetches == before + 1
    # The issuer rotates: the new key is published; after the rate-limit interval the next token is accepted.
    issuer.keys[new_key.kid] = new_key
    time.sleep(2.1)
    assert _get(oidc_server, "/v3/images", token).status_code == 200
    assert issuer.jwks_fetches == before + 2
    assert _get(oidc_server, "/v3/images", admin_token).status_code == 200  # the old key still served


def test_job_tokens_are_not_jwts(oidc_server: ImsServer) -> None:
    response = _get(oidc_server, "/v3/images", "imsjob_" + "A" * 43)
    _assert_401(response, "job token")


def test_our_client_sends_the_token(oidc_server: ImsServer, admin_token: str) -> None:
    with ImsClient(oidc_server.url, token=admin_token) as client:
        image = client.create_image("from-client", "x86_64")
        assert client.get_image(image["id"])["name"] == "from-client"
    with ImsClient(oidc_server.url) as anonymous, pytest.raises(ImsApiError) as error:
        anonymous.get_image(image["id"])
    assert error.value.status == 401


def _cli(server: ImsServer, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMS_")}
    base.update({"IMS_CONFIG": "/nonexistent/ims.toml", "IMS_API_URL": server.url})
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "ims", *args], capture_output=True, text=True, env=base, timeout=60)


def test_cli_with_token_and_token_file(oidc_server: ImsServer, admin_token: str, tmp_path: Path) -> None:
    result = _cli(oidc_server, "images", "list", "--format", "json")
    assert result.returncode == 1 and "401" in result.stderr, result.stderr
    result = _cli(oidc_server, "images", "list", "--format", "json", "--token", admin_token)
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), list)

    plain = tmp_path / "token"
    plain.write_text(admin_token + "\n")
    result = _cli(oidc_server, "images", "list", "--format", "json", "--token-file", str(plain))
    assert result.returncode == 0, result.stderr
    cray_style = tmp_path / "cray-token.json"  # what `cray` keeps: the OAuth token response
    cray_style.write_text(json.dumps({"access_token": admin_token, "token_type": "bearer", "expires_in": 300}))
    result = _cli(oidc_server, "public-keys", "list", "--format", "json", env={"IMS_TOKEN_FILE": str(cray_style)})
    assert result.returncode == 0, result.stderr

    result = _cli(oidc_server, "images", "list", "--token-file", str(tmp_path / "missing"))
    assert result.returncode == 2 and "cannot read token file" in result.stderr
    assert admin_token not in result.stderr


def _wait_for_log(server: ImsServer, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = server.log()
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.1)


def test_serve_refuses_a_public_address_without_an_explicit_auth_mode(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMS_", "S3_"))}
    env["IMS_DATA_DIR"] = str(tmp_path)
    command = [sys.executable, "-m", "ims", "serve", "--host", "0.0.0.0", "--port", "9"]  # noqa: S104
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "IMS_AUTH" in lines[0] and "0.0.0.0" in lines[0], result.stderr
    # oidc without its issuer and audience: one line as well.
    result = subprocess.run(command, capture_output=True, text=True, env={**env, "IMS_AUTH": "oidc"}, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "IMS_OIDC_ISSUER" in lines[0] and "IMS_OIDC_AUDIENCE" in lines[0], result.stderr
    result = subprocess.run(command, capture_output=True, text=True, env={**env, "IMS_AUTH": "kerberos"}, timeout=60)
    assert result.returncode == 2 and "none or oidc" in result.stderr
