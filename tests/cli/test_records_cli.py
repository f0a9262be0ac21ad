"""Every resource command group of `ims` against a running server: list/describe/create/update/delete."""

from __future__ import annotations

import json
import tomllib
import uuid
from pathlib import Path

import pytest
from tests.cli.conftest import Cli, ids
from tests.support.servers import ImsServer

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJKRI/1unLwCzACau17LIGNNrMfOBhWL62YjQE0CaD5N test@ims"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_public_keys_create_list_describe_delete_undelete(cli: Cli, tmp_path: Path) -> None:
    key_file = tmp_path / "id.pub"
    key_file.write_text(KEY + "\n")
    name = unique("key")
    created = cli.json("public-keys", "create", "--name", name, "--public-key", str(key_file))
    assert created["name"] == name and created["public_key"] == KEY

    table = cli.ok("public-keys", "list").stdout
    assert table.splitlines()[0].split() == ["ID", "NAME", "CREATED"]
    assert any(line.startswith(created["id"]) and name in line for line in table.splitlines())
    assert cli.json("public-keys", "describe", created["id"]) == created

    cli.ok("public-keys", "delete", created["id"])
    assert created["id"] not in ids(cli.json("public-keys", "list"))
    deleted = cli.json("deleted", "public-keys", "describe", created["id"])
    assert deleted["deleted"] and deleted["name"] == name
    cli.ok("deleted", "public-keys", "update", created["id"], "--operation", "undelete")
    assert cli.json("public-keys", "describe", created["id"])["name"] == name


def test_public_key_from_stdin(cli: Cli) -> None:
    result = cli.ok("public-keys", "create", "--name", unique("stdin"), "--public-key", "-", "--format", "json",
                    input=KEY + "\n")
    created = json.loads(result.stdout)
    assert created["public_key"] == KEY


def test_recipes_create_update_and_templates(cli: Cli) -> None:
    name = unique("recipe")
    created = cli.json(
        "recipes", "create", "--name", name, "--linux-distribution", "sles15", "--arch", "aarch64",
        "--require-dkms", "False", "--template", "CSM_RELEASE=1.6", "--template", "OTHER=x=y",
    )
    assert created["recipe_type"] == "kiwi-ng" and created["arch"] == "aarch64"
    assert created["require_dkms"] is False
    assert created["template_dictionary"] == [
        {"key": "CSM_RELEASE", "value": "1.6"}, {"key": "OTHER", "value": "x=y"}
    ]
    updated = cli.json(
        "recipes", "update", created["id"], "--arch", "x86_64", "--require-dkms", "TRUE",
        "--template-dictionary-key", "A,B", "--template-dictionary-value", "1,2",
    )
    assert updated["arch"] == "x86_64" and updated["require_dkms"] is True
    assert updated["template_dictionary"] == [{"key": "A", "value": "1"}, {"key": "B", "value": "2"}]
    listed = cli.ok("recipes", "list").stdout
    assert "LINK.PATH" in listed.splitlines()[0] and created["id"] in listed


def test_images_create_update_labels_and_delete_cycle(cli: Cli) -> None:
    name = unique("image")
    created = cli.json("images", "create", "--name", name, "--metadata", "owner=ops")
    assert created["metadata"] == {"owner": "ops"} and created["arch"] == "x86_64"
    image_id = created["id"]
    labelled = cli.json(
        "images", "update", image_id, "--metadata-operation", "set", "--metadata-key", "sbps-project",
        "--metadata-value", "true",
    )
    assert labelled["metadata"] == {"owner": "ops", "sbps-project": "true"}
    removed = cli.json("images", "update", image_id, "--metadata-operation", "remove", "--metadata-key", "owner")
    assert removed["metadata"] == {"sbps-project": "true"}
    assert cli.json("images", "update", image_id, "--arch", "aarch64")["arch"] == "aarch64"

    described = cli.ok("images", "describe", image_id).stdout
    assert "id" in described and image_id in described and "metadata.sbps-project  true" in described

    cli.ok("images", "delete", image_id)
    assert image_id in ids(cli.json("deleted", "images", "list"))
    cli.ok("deleted", "images", "update", image_id, "--operation", "undelete")
    assert cli.json("images", "describe", image_id)["metadata"] == {"sbps-project": "true"}
    cli.ok("images", "delete", image_id)
    cli.ok("deleted", "images", "delete", image_id)
    assert image_id not in ids(cli.json("deleted", "images", "list"))
    missing = cli("deleted", "images", "describe", image_id)
    assert missing.exit_code == 1


def test_deleteall_and_updateall_on_an_empty_server(cli: Cli, fresh_ims_server: ImsServer) -> None:
    fresh = cli.against(fresh_ims_server)
    for _ in range(2):
        fresh.json("recipes", "create", "--name", unique("r"), "--linux-distribution", "sles15")
    assert len(fresh.json("recipes", "list")) == 2
    fresh.ok("recipes", "deleteall")
    assert fresh.json("recipes", "list") == []
    assert len(fresh.json("deleted", "recipes", "list")) == 2
    fresh.ok("deleted", "recipes", "updateall", "--operation", "undelete")
    assert len(fresh.json("recipes", "list")) == 2
    fresh.ok("recipes", "deleteall")
    fresh.ok("deleted", "recipes", "deleteall")
    assert fresh.json("deleted", "recipes", "list") == []

    fresh.ok("images", "create", "--name", "one")
    fresh.ok("images", "deleteall")
    assert fresh.json("images", "list") == []


def test_remote_build_nodes(cli: Cli) -> None:
    xname = f"x3000c0s{uuid.uuid4().int % 10000}b0n0"
    assert cli.json("remote-build-nodes", "create", "--xname", xname) == {"xname": xname}
    assert {"xname": xname} in cli.json("remote-build-nodes", "list")
    assert cli.json("remote-build-nodes", "describe", xname) == {"xname": xname}
    status = cli.json("remote-build-nodes", "status", "describe", xname)
    assert status["xname"] == xname and set(status) >= {"ableToRunJobs", "nodeArch", "numCurrentJobs"}
    table = cli.ok("remote-build-nodes", "status", "list").stdout
    assert table.splitlines()[0].split()[:2] == ["XNAME", "ABLETORUNJOBS"] and xname in table
    cli.ok("remote-build-nodes", "delete", xname)
    assert cli("remote-build-nodes", "describe", xname).exit_code == 1


def test_toml_output_parses(cli: Cli) -> None:
    name = unique("toml")
    cli.ok("images", "create", "--name", name)
    listed = tomllib.loads(cli.ok("images", "list", "--format", "toml").stdout)
    assert name in {image["name"] for image in listed["results"]}
    one = next(image for image in listed["results"] if image["name"] == name)
    described = tomllib.loads(cli.ok("images", "describe", one["id"], "--format", "toml").stdout)
    # TOML has no null: an unlinked image simply has no `link` key.
    assert described["name"] == name and "link" not in described


def test_format_from_environment_and_config_file(cli: Cli, tmp_path: Path) -> None:
    name = unique("fmt")
    env_json = Cli({**cli.env, "IMS_FORMAT": "json"})
    created = json.loads(env_json.ok("images", "create", "--name", name).stdout)
    config = tmp_path / "config.toml"
    config.write_text(f'api_url = "{cli.env["IMS_API_URL"]}"\nformat = "toml"\n')
    from_file = Cli({**cli.env, "IMS_API_URL": None, "IMS_CONFIG": str(config)})
    assert tomllib.loads(from_file.ok("images", "describe", created["id"]).stdout)["id"] == created["id"]


@pytest.mark.parametrize("fmt", ["json", "toml", "table"])
def test_empty_lists_render(cli: Cli, fresh_ims_server: ImsServer, fmt: str) -> None:
    result = cli.against(fresh_ims_server).ok("public-keys", "list", "--format", fmt)
    if fmt == "json":
        assert json.loads(result.stdout) == []
    elif fmt == "toml":
        assert tomllib.loads(result.stdout) == {"results": []}
    else:
        assert result.stdout.split() == ["ID", "NAME", "CREATED"]


def test_images_and_recipes_can_be_renamed(cli: Cli) -> None:
    image = cli.json("images", "create", "--name", unique("image"))
    assert cli.json("images", "update", image["id"], "--name", "renamed-image")["name"] == "renamed-image"
    recipe = cli.json("recipes", "create", "--name", unique("recipe"), "--linux-distribution", "sles15")
    assert cli.json("recipes", "update", recipe["id"], "--name", "renamed-recipe")["name"] == "renamed-recipe"
