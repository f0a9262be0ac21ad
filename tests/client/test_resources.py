"""ims.client.resources against a running server: the calls the `ims` command does not already cover."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from tests.support.servers import ImsServer

from ims.artifacts.s3 import ArtifactStore
from ims.client.follow import ssh_access
from ims.client.http import ImsApiError, ImsClient
from ims.client.resources import Ims, link
from ims.domain.links import S3Location


@pytest.fixture
def ims(ims_server: ImsServer) -> Iterator[Ims]:
    with Ims(ImsClient(ims_server.url)) as client:
        yield client


def test_version_health_and_paging(ims: Ims, fresh_ims_server: ImsServer) -> None:
    assert ims.version() and ims.ready()
    with Ims(ImsClient(fresh_ims_server.url)) as fresh:
        made = [fresh.public_keys.create(f"k{i}", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJg53PpLN3uOchSRBtD7PS0mg4lIfdSn5FYiCDLGvanW k") for i in range(3)]
        assert [k["id"] for k in fresh.public_keys.list(limit=2)] == [k["id"] for k in made[:2]]
        assert [k["id"] for k in fresh.public_keys.list(offset=2)] == [made[2]["id"]]


def test_recipe_created_with_a_link_and_purged(ims: Ims, artifact_store: ArtifactStore) -> None:
    location = S3Location("ims", f"recipes/{uuid.uuid4()}/recipe.tar.gz")
    etag = artifact_store.put_bytes(location, b"\x1f\x8b not really", "application/x-compressed-tar")
    recipe = ims.recipes.create("linked", linux_distribution="sles15", link=link(location.url, etag),
                                template_dictionary={"A": "1"})
    assert recipe["link"] == {"path": location.url, "etag": etag, "type": "s3"}
    assert recipe["template_dictionary"] == [{"key": "A", "value": "1"}]
    ims.recipes.purge(recipe["id"], cascade=True)
    with pytest.raises(ImsApiError) as missing:
        ims.recipes.get(recipe["id"])
    assert missing.value.status == 404
    assert recipe["id"] not in {r["id"] for r in ims.deleted.recipes.list()}
    deadline = time.monotonic() + 30  # the S3 delete runs as a background task
    while artifact_store.head(location) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert artifact_store.head(location) is None


def test_image_labels_and_v2_hard_delete(ims_server: ImsServer, ims: Ims) -> None:
    image = ims.images.create("labelled", arch="aarch64", metadata={"a": "1"})
    assert ims.images.set_label(image["id"], "b", "2")["metadata"] == {"a": "1", "b": "2"}
    assert ims.images.remove_label(image["id"], "a")["metadata"] == {"b": "2"}
    with Ims(ImsClient(ims_server.url, version="v2")) as v2:
        assert v2.images.get(image["id"])["arch"] == "aarch64"
        v2.images.delete(image["id"])  # v2: gone for good, not soft-deleted
    assert image["id"] not in {i["id"] for i in ims.deleted.images.list()}


def test_errors_carry_the_problem_detail(ims: Ims) -> None:
    with pytest.raises(ImsApiError) as failure:
        ims.recipes.create("bad", linux_distribution="beos")
    assert failure.value.status == 422
    assert failure.value.errors == {"linux_distribution": [failure.value.errors["linux_distribution"][0]]}
    assert "failed validation" in failure.value.detail
    with pytest.raises(ImsApiError) as missing:
        list(ims.jobs.logs("no-such-job"))
    assert missing.value.status == 404


def test_ssh_access_reads_the_first_container() -> None:
    job = {
        "ssh_containers": [
            {
                "name": "customize",
                "jail": True,
                "connection_info": {
                    "customer_access": {"host": "j1.ims.cmn.example", "port": 2222},
                    "cluster.local": {"host": "svc.ims.svc.cluster.local", "port": 22},
                },
            }
        ]
    }
    access = ssh_access(job)
    assert access is not None
    assert access.command == "ssh -p 2222 root@j1.ims.cmn.example" and access.done_command == "touch /tmp/complete"
    local = ssh_access(job, "cluster.local")
    assert local is not None and local.host == "svc.ims.svc.cluster.local"
    assert ssh_access({"ssh_containers": None}) is None and ssh_access({"ssh_containers": [{"jail": False}]}) is None
