"""fetch-recipe through a real presigned SeaweedFS URL: md5, safe extraction, templating, cleanup."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pytest

from ims.artifacts.s3 import ArtifactStore
from ims.client.recipes import pack_recipe
from ims.client.transfer import file_md5
from ims.domain.links import S3Location
from ims.stages.create_env import CreateSettings
from ims.stages.environment import JobEnvironment
from ims.stages.recipe_fetch import fetch_recipe
from ims.stages.reporting import Reporter, StageError


def _put(store: ArtifactStore, archive: Path) -> str:
    location = S3Location("ims", f"recipes/fetch-{time.monotonic_ns()}/recipe.tar.gz")
    store.upload_file(archive, location)
    return store.presign_get(location)


def _recipe_dir(tmp_path: Path, template: bool = True) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    (source / "config.xml").write_text('<image><repository><source path="{{ mirror }}"/></repository></image>\n')
    (source / "config.sh").write_text("#!/bin/sh\n")
    (source / "config.sh").chmod(0o755)
    if template:
        (source / ".ims_recipe_template.yaml").write_text("template_files:\n  - config.xml\n")
    return source


def _job(tmp_path: Path, url: str, md5: str = "") -> tuple[JobEnvironment, Reporter, io.StringIO]:
    env = JobEnvironment.from_env(
        {
            "IMS_JOB_ID": "job-1",
            "IMAGE_ROOT_PARENT": str(tmp_path / "image"),
            "DOWNLOAD_URL": url,
            "DOWNLOAD_MD5SUM": md5,
            "IMS_DOWNLOAD_ATTEMPTS": "2",
            "IMS_DOWNLOAD_RETRY_SECONDS": "0.1",
        }
    )
    out = io.StringIO()
    return env, Reporter(env.job_id, None, out), out


def test_fetch_extracts_and_templates(tmp_path: Path, artifact_store: ArtifactStore) -> None:
    archive = tmp_path / "recipe.tar.gz"
    pack_recipe(_recipe_dir(tmp_path), archive)
    env, reporter, out = _job(tmp_path, _put(artifact_store, archive), file_md5(archive))
    settings = CreateSettings(template_dictionary=json.dumps({"mirror": "http://mirror.invalid/debian"}))
    recipe = fetch_recipe(env, reporter, settings)
    assert recipe == env.image_root_parent / "recipe"
    assert 'path="http://mirror.invalid/debian"' in (recipe / "config.xml").read_text()
    assert (recipe / "config.sh").stat().st_mode & 0o777 == 0o755
    assert "job status -> fetching_recipe" in out.getvalue()
    assert not (env.image_root_parent / "recipe.tar.gz").exists()
    # The presigned URL's signature never reaches the log.
    assert "Signature" not in out.getvalue()
    # A second run in the same job directory starts again from the archive.
    assert fetch_recipe(env, reporter, settings) == recipe


def test_md5_mismatch_fails_and_leaves_nothing(tmp_path: Path, artifact_store: ArtifactStore) -> None:
    archive = tmp_path / "recipe.tar.gz"
    pack_recipe(_recipe_dir(tmp_path), archive)
    env, reporter, _ = _job(tmp_path, _put(artifact_store, archive), "0" * 32)
    with pytest.raises(StageError, match="md5 mismatch"):
        fetch_recipe(env, reporter, CreateSettings(template_dictionary='{"mirror": "x"}'))
    assert sorted(p.name for p in env.image_root_parent.iterdir()) == []


def test_hostile_archive_is_rejected_by_the_stage(tmp_path: Path, artifact_store: ArtifactStore) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../../escape")
        data = b"pwned"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    env, reporter, _ = _job(tmp_path, _put(artifact_store, archive))
    with pytest.raises(StageError, match=r"recipe archive rejected: unsafe archive member '../../escape'"):
        fetch_recipe(env, reporter, CreateSettings())
    assert not (tmp_path / "escape").exists()
    assert sorted(p.name for p in env.image_root_parent.iterdir()) == []


def test_templated_recipe_without_dictionary_fails(tmp_path: Path, artifact_store: ArtifactStore) -> None:
    archive = tmp_path / "recipe.tar.gz"
    pack_recipe(_recipe_dir(tmp_path), archive)
    env, reporter, _ = _job(tmp_path, _put(artifact_store, archive))
    with pytest.raises(StageError, match="template_dictionary is empty"):
        fetch_recipe(env, reporter, CreateSettings())


def test_dictionary_for_plain_recipe_only_warns(tmp_path: Path, artifact_store: ArtifactStore) -> None:
    archive = tmp_path / "recipe.tar.gz"
    pack_recipe(_recipe_dir(tmp_path, template=False), archive)
    env, reporter, out = _job(tmp_path, _put(artifact_store, archive))
    recipe = fetch_recipe(env, reporter, CreateSettings(template_dictionary='{"mirror": "x"}'))
    assert "{{ mirror }}" in (recipe / "config.xml").read_text()
    assert "warning: template dictionary given" in out.getvalue()


def test_refused_url_fails_without_leaking_it(tmp_path: Path, artifact_store: ArtifactStore) -> None:
    url = artifact_store.presign_get(S3Location("ims", "recipes/none/recipe.tar.gz"))
    env, reporter, out = _job(tmp_path, url)
    with pytest.raises(StageError) as caught:
        fetch_recipe(env, reporter, CreateSettings())
    assert "Signature" not in str(caught.value) and "Signature" not in out.getvalue()
