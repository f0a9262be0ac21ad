"""Issue 10: every input that used to give a 5xx (or was stored although it is garbage) is a clear 4xx."""

from __future__ import annotations

import base64
import re
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.support.servers import ImsServer, PostgresCluster, start_ims_server

from ims.domain.validation import NAME_MAX_LENGTH, check_public_key, check_xname

ROOT = Path(__file__).resolve().parents[2]
LISTS = ["/v3/images", "/v2/recipes", "/public-keys", "/v3/jobs", "/v3/deleted/images"]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"
PRIVATE = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
BAD_PATHS = ["00", "s3://", "s3:///key", "s3://bucket", "s3://bucket/", "file:///etc/passwd", "/etc/passwd",
             "http://example.com/x", "s3://Not A Bucket/key", "s3://ok-bucket/a\x01b"]


def _blob_key(kind: str, blob_type: str) -> str:
    blob = struct.pack(">I", len(blob_type)) + blob_type.encode() + b"\0" * 36
    return f"{kind} {base64.b64encode(blob).decode()} me@host"


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("param", ["limit", "offset"])
def test_paging_out_of_range_is_400(api: httpx.Client, path: str, param: str) -> None:
    for value in (str(2**63), "9" * 40, "-1"):
        response = api.get(path, params={param: value})
        assert response.status_code == 400, (path, param, value, response.text)
    assert api.get(path, params={param: str(2**31 - 1)}).status_code == 200


@pytest.mark.parametrize("bad", BAD_PATHS)
@pytest.mark.parametrize("kind", ["images", "recipes"])
def test_link_path_not_s3_is_422_naming_the_field(api: httpx.Client, kind: str, bad: str) -> None:
    body: dict[str, Any] = {"name": "x", "link": {"path": bad, "type": "s3"}}
    if kind == "recipes":
        body |= {"recipe_type": "kiwi-ng", "linux_distribution": "sles15"}
    response = api.post(f"/v3/{kind}", json=body)
    assert response.status_code == 422, response.text
    assert "path" in response.json()["errors"]["link"]
    # PATCH the same onto a record without a link
    plain = {k: v for k, v in body.items() if k != "link"}
    record = api.post(f"/v3/{kind}", json=plain).json()
    response = api.patch(f"/v2/{kind}/{record['id']}", json={"link": {"path": bad, "type": "s3"}})
    assert response.status_code == 422, response.text
    assert "path" in response.json()["errors"]["link"]


def test_deep_nesting_and_oversize_bodies(api: httpx.Client) -> None:
    headers = {"Content-Type": "application/json"}
    response = api.post("/v3/images", content=b"[" * 200_000, headers=headers)
    assert response.status_code == 400
    assert "nested deeper" in response.json()["detail"]
    response = api.post("/v3/images", content=b'{"name": ' + b"[" * 40 + b"]" * 40 + b"}", headers=headers)
    assert response.status_code == 400
    # Brackets inside strings do not count.
    response = api.post("/v3/images", content=b'{"name": "' + b"[" * 100 + b'"}', headers=headers)
    assert response.status_code == 201
    response = api.post("/v3/images", content=b'{"name": "' + b"x" * 2_000_000 + b'"}', headers=headers)
    assert response.status_code == 413


def test_age_overflow_is_400(api: httpx.Client) -> None:
    for age in ("10000000d", "99999999999999999999w", "1" * 200 + "d"):
        response = api.delete("/v3/jobs", params={"age": age})
        assert response.status_code == 400, (age, response.text)
        assert response.json()["title"].startswith("Unsupported age")


def test_huge_sizes_are_422(api: httpx.Client) -> None:
    body = {"job_type": "create", "artifact_id": str(uuid.uuid4()), "public_key_id": str(uuid.uuid4()),
            "image_root_archive_name": "x", "build_env_size": int("9" * 31)}
    response = api.post("/v3/jobs", json=body)
    assert response.status_code == 422
    assert "build_env_size" in response.json()["errors"]
    response = api.post("/v3/jobs", json=body | {"build_env_size": 10, "job_mem_size": 2**70})
    assert "job_mem_size" in response.json()["errors"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("PUT", "/v3/images", "DELETE, GET, HEAD, OPTIONS, POST"),
     ("PATCH", "/public-keys/x", "DELETE, GET, HEAD, OPTIONS"),
     ("POST", "/v3/images/x", "DELETE, GET, HEAD, OPTIONS, PATCH"),
     ("POST", "/healthz/live", "GET, HEAD, OPTIONS")],
)
def test_405_carries_allow(api: httpx.Client, method: str, path: str, allow: str) -> None:
    response = api.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow


def test_nul_in_path_and_query(api: httpx.Client) -> None:
    assert api.get("/v3/images/a%00b").status_code == 404
    assert api.get("/v3/jobs", params={"status": "error\x00"}).status_code == 400
    assert api.delete("/v3/jobs", params={"age": "1d\x00"}).status_code == 400


@pytest.mark.parametrize(
    ("key", "words"),
    [
        (PRIVATE, "private key"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", "private key"),
        ("just some text", "unknown key type"),
        ("oneword", "not an OpenSSH public key"),
        (f'command="/bin/sh" {KEY}', "options"),
        (f"{KEY}\n{KEY}", "one line"),
        ("ssh-ed25519 not*base64", "base64"),
        ("ssh-foo AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS", "unknown key type"),
        (_blob_key("ssh-rsa", "ssh-ed25519"), "not 'ssh-rsa'"),
    ],
)
def test_public_key_must_be_one_openssh_line(api: httpx.Client, key: str, words: str) -> None:
    response = api.post("/v3/public-keys", json={"name": "k", "public_key": key})
    assert response.status_code == 422, response.text
    message = response.json()["errors"]["public_key"][0]
    assert words in message
    assert check_public_key(key) == message  # the CLI checks with the same function


def test_real_public_keys_pass(api: httpx.Client) -> None:
    for key in (KEY, _blob_key("ssh-rsa", "ssh-rsa"), _blob_key("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
                KEY + "\n", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS"):
        assert api.post("/v3/public-keys", json={"name": "k", "public_key": key}).status_code == 201, key


@pytest.mark.parametrize("xname", ["../../x", "a/b", "x3000c0s19b4n0/..", "", " ", "-bad", "a..b", "1.2.3.4.5"])
def test_xname_rules(api: httpx.Client, xname: str) -> None:
    response = api.post("/v3/remote-build-nodes", json={"xname": xname})
    assert response.status_code == 422, response.text
    assert check_xname(xname) is not None


def test_good_xnames(api: httpx.Client) -> None:
    for xname in ("x3000c0s19b4n0", "ncn-w001", "build1.example.com", "10.1.2.3", "fd00::1"):
        response = api.post("/v3/remote-build-nodes", json={"xname": xname})
        assert response.status_code == 201, (xname, response.text)
        api.delete(f"/v3/remote-build-nodes/{xname}")


def test_name_length_bound(api: httpx.Client) -> None:
    response = api.post("/v3/images", json={"name": "n" * (NAME_MAX_LENGTH + 1)})
    assert response.status_code == 422
    assert response.json()["errors"] == {"name": [f"name must be at most {NAME_MAX_LENGTH} characters."]}
    assert api.post("/v3/images", json={"name": "n" * NAME_MAX_LENGTH}).status_code == 201


def _nul_cases(client: httpx.Client) -> None:
    image = client.post("/v3/images", json={"name": "ok"}).json()
    cases: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
        ("POST", "/v3/images", {"name": "a\x00b"}, {"name": ["Must not contain a NUL character."]}),
        ("POST", "/v3/images", {"name": "a", "metadata": {"k": "v\x00"}},
         {"metadata": {"k": ["Must not contain a NUL character."]}}),
        ("POST", "/v3/public-keys", {"name": "\x00", "public_key": KEY}, {"name": ["Must not contain a NUL character."]}),
        ("PATCH", f"/v3/images/{image['id']}", {"name": "x\x00"}, {"name": ["Must not contain a NUL character."]}),
        ("POST", "/v3/remote-build-nodes", {"xname": "x1\x00"}, {"xname": ["Must not contain a NUL character."]}),
    ]
    for method, path, body, errors in cases:
        response = client.request(method, path, json=body)
        assert response.status_code == 422, (path, body, response.text)
        assert response.json()["errors"] == errors
    assert client.get("/v3/images/x%00").status_code == 404
    assert client.get("/v3/public-keys", params={"limit": "1\x00"}).status_code == 400


def test_nul_is_422_on_sqlite(api: httpx.Client) -> None:
    _nul_cases(api)


@pytest.fixture(scope="module")
def pg_server(postgres: PostgresCluster, work_root: Path, s3_env: dict[str, str]) -> Iterator[ImsServer]:
    name = f"nul_{uuid.uuid4().hex[:8]}"
    url = postgres.create_database(name)
    server = start_ims_server(work_root / name, s3_env, {"IMS_DATABASE_URL": url})
    yield server
    server.stop()


def test_nul_is_422_on_postgresql(pg_server: ImsServer) -> None:
    with httpx.Client(base_url=pg_server.url, timeout=30) as client:
        _nul_cases(client)


def test_spec_states_what_the_server_accepts() -> None:
    spec = yaml.safe_load((ROOT / "api" / "openapi.yaml").read_text())
    schemas = spec["components"]["schemas"]
    for model in ("RecipePatch", "ImagePatch"):
        for name, prop in schemas[model]["properties"].items():
            assert "anyOf" not in prop and prop.get("type") != "null", (model, name)
    assert "anyOf" not in schemas["JobPatch"]["properties"]["status"]
    list_jobs = spec["paths"]["/v3/jobs"]["get"]["parameters"]
    status = next(p for p in list_jobs if p["name"] == "status")
    items = next(option for option in status["schema"].get("anyOf", [status["schema"]]) if option.get("items"))
    pattern = re.compile(items["items"]["pattern"])
    assert pattern.match("creating") and pattern.match("ERROR") and not pattern.match("bogus")
    limit = next(p for p in list_jobs if p["name"] == "limit")
    assert "2147483647" in str(limit["schema"])
    assert schemas["JobInput"]["properties"]["build_env_size"]["maximum"] > 0
    assert "pattern" in schemas["ArtifactLink"]["properties"]["path"]


def test_cli_checks_the_key_before_sending(ims_server: ImsServer, tmp_path: Path) -> None:
    """`ims public-keys create` applies the same rule and points at the .pub file next to a private key."""
    import os
    import subprocess
    import sys

    private = tmp_path / "id_ed25519"
    private.write_text(PRIVATE)
    (tmp_path / "id_ed25519.pub").write_text(KEY + "\n")
    env = dict(os.environ, IMS_API_URL=ims_server.url)
    run = subprocess.run([sys.executable, "-m", "ims", "public-keys", "create", "--name", "k", "--public-key",
                          str(private)], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert "private key" in run.stderr and f"Did you mean {private}.pub?" in run.stderr
    run = subprocess.run([sys.executable, "-m", "ims", "remote-build-nodes", "create", "--xname", "../../x"],
                         capture_output=True, text=True, env=env, timeout=60, check=False)
    assert run.returncode == 2 and "xname must be" in run.stderr, run.stderr
