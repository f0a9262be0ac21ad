"""api/openapi.yaml is what the app serves, is regenerated deterministically, and passes the Redocly linter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ims.api.openapi_export import render_yaml

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "api" / "openapi.yaml"
REGENERATE = "python -m ims.api.openapi_export"

JOB_RECORD_KEYS = {
    "created", "job_type", "artifact_id", "build_env_size", "id", "enable_debug", "public_key_id", "kubernetes_job",
    "kubernetes_service", "kubernetes_configmap", "ssh_containers", "status", "image_root_archive_name",
    "initrd_file_name", "kernel_file_name", "resultant_image_id", "kubernetes_namespace",
    "kernel_parameters_file_name", "arch", "require_dkms", "kubernetes_pvc", "job_mem_size", "remote_build_node",
    "kubernetes_secret",
}


def _spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return loaded


def test_openapi_yaml_is_current() -> None:
    assert SPEC.read_text() == render_yaml(), f"api/openapi.yaml is stale: run `{REGENERATE}`"


def test_rendering_does_not_depend_on_hash_seed(tmp_path: Path) -> None:
    outputs = []
    for seed in ("1", "2"):
        target = tmp_path / f"openapi-{seed}.yaml"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-m", "ims.api.openapi_export", "--output", str(target)],
                       check=True, env=env, cwd=ROOT, capture_output=True)
        outputs.append(target.read_text())
    assert outputs[0] == outputs[1]


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "openapi.yaml"
    stale.write_text(SPEC.read_text().replace("Image Management Service", "Something Else", 1))
    result = subprocess.run([sys.executable, "-m", "ims.api.openapi_export", "--check", "--output", str(stale)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert "Something Else" in result.stdout


def test_served_document_is_the_file(api: httpx.Client) -> None:
    reply = api.get("/openapi.json")
    assert reply.status_code == 200
    assert reply.json() == _spec()


def test_documents_what_the_original_spec_forgot() -> None:
    schemas = _spec()["components"]["schemas"]
    job = schemas["JobRecord"]["properties"]
    assert set(job) >= JOB_RECORD_KEYS
    status = schemas["JobRecord"]["properties"]["status"]
    assert "packaging_artifacts" in json.dumps(status)
    assert schemas["JobInput"]["properties"]["build_env_size"]["default"] == 60


def test_every_operation_is_named_tagged_and_documents_a_4xx() -> None:
    spec = _spec()
    described_tags = {tag["name"] for tag in spec["tags"] if tag["description"]}
    operation_ids = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            operation_ids.append(operation["operationId"])
            assert set(operation["tags"]) <= described_tags, (method, path)
            assert any(code.startswith("4") for code in operation["responses"]), (method, path)
    assert len(operation_ids) == len(set(operation_ids))


def _redocly() -> list[str]:
    local = ROOT / "node_modules" / ".bin" / "redocly"
    if local.exists():
        return [str(local)]
    if shutil.which("npx") is None:
        pytest.fail("neither node_modules/.bin/redocly nor npx: run scripts/install-test-tools.sh")
    version = json.loads((ROOT / "package.json").read_text())["devDependencies"]["@redocly/cli"]
    return ["npx", "--yes", f"@redocly/cli@{version}"]


def test_redocly_lint_is_clean() -> None:
    env = {**os.environ, "REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"}
    result = subprocess.run([*_redocly(), "lint", "api/openapi.yaml", "--format=json"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout[result.stdout.index("{"):])
    problems = [f"{p['ruleId']}: {p['message']} at {p['location'][0]['pointer']}" for p in report["problems"]]
    assert result.returncode == 0 and not problems, "\n".join(problems) or result.stderr
    assert report["totals"] == {"errors": 0, "warnings": 0, "ignored": 0}
