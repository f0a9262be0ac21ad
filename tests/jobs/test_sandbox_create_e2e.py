"""A create build whose config.sh goes looking for the host: it breaks out of kiwi's chroot (it holds
CAP_SYS_CHROOT, as any OCI container does) and finds only kiwi's sandbox: no IMS data dir or database, no
host /etc/shadow, no IMS source tree, and neither the IMS API nor the S3 endpoint on the host's loopback.
The build still succeeds (its packages come in through slirp4netns). One real kiwi build (~90 s unloaded).
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from tests.jobs.kit import wait_status
from tests.jobs.test_create_e2e import BUILD_TIMEOUT, RECIPES, _post_create, _upload
from tests.support.images import read_from_squashfs
from tests.support.servers import ImsServer

from ims.artifacts.s3 import ArtifactStore
from ims.client.http import ImsClient
from ims.client.resources import Ims
from ims.domain.links import S3Location

pytestmark = pytest.mark.slow

PROBE_FILE = "root/ims-sandbox-probe.txt"
# Appended to the shipped tbz recipe's config.sh (bash, run by kiwi inside the image root). perl-base is
# Essential in Debian, so the escape needs nothing the recipe does not already install.
PROBE = r"""
# --- IMS sandbox probe: leave the chroot, then look for the host
probe=$(perl -e '
    mkdir "/.ims-escape"; chroot "/.ims-escape" or die "chroot: $!";
    chdir ".." for 1 .. 64; chroot "." or die "chroot back: $!";
    exec "/bin/sh", "-c", $ARGV[0];
' '
    echo "ROOT: $(ls -a / | tr "\n" " ")"
    echo "DATA: $(ls -a @DATA@ 2>&1 | tr "\n" " ")"
    if test -e @DATA@/ims.sqlite3; then echo "DB: present"; else echo "DB: absent"; fi
    if test -e /etc/shadow; then echo "SHADOW: present"; else echo "SHADOW: absent"; fi
    if test -e @SOURCE@; then echo "SOURCE: present"; else echo "SOURCE: absent"; fi
    echo "CAPS: $(grep -E "^CapEff" /proc/self/status | tr -d "\t")"
' 2>&1 || true)
rmdir /.ims-escape 2>/dev/null || true
# The host's loopback services: the IMS API and the S3 endpoint (bash's /dev/tcp, 3 s at most each).
for target in API:@API_PORT@ S3:@S3_PORT@ GATEWAY:@GATEWAY@; do
    name=${target%%:*}; port=${target#*:}; host=127.0.0.1
    if [ "$name" = GATEWAY ]; then host=10.0.2.2; fi
    if timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then state=reachable; else state=unreachable; fi
    probe="$probe
NET_$name: $state"
done
printf '%s\n' "$probe" > /root/ims-sandbox-probe.txt
"""


@pytest.fixture(scope="module")
def ims_client(job_server: ImsServer) -> Iterator[Ims]:
    with Ims(ImsClient(job_server.url)) as client:
        yield client


def test_config_sh_finds_nothing_of_the_host_and_the_build_succeeds(
    job_server: ImsServer,
    jobs_api: httpx.Client,
    ims_client: Ims,
    artifact_store: ArtifactStore,
    key_id: str,
    tmp_path: Path,
) -> None:
    recipe = tmp_path / f"probing-{uuid.uuid4().hex[:6]}"
    shutil.copytree(RECIPES / "debian-bookworm-tbz", recipe)
    source_tree = Path(__file__).resolve().parents[2] / "src" / "ims"
    api_port = str(urlsplit(job_server.url).port)
    s3_port = str(urlsplit(job_server.env["S3_ENDPOINT"]).port)
    probe = PROBE.replace("@DATA@", str(job_server.data_dir)).replace("@SOURCE@", str(source_tree))
    probe = probe.replace("@API_PORT@", api_port).replace("@S3_PORT@", s3_port).replace("@GATEWAY@", api_port)
    with (recipe / "config.sh").open("a") as config:
        config.write(probe)
    recipe_id = _upload(ims_client, artifact_store, recipe)
    start = time.monotonic()
    job = _post_create(jobs_api, recipe_id, key_id)
    done = wait_status(jobs_api, job["id"], {"success"}, timeout=BUILD_TIMEOUT)
    print(f"TIMING sandboxed create (tbz): POST to success {time.monotonic() - start:.1f} s")

    image = jobs_api.get(f"/v3/images/{done['resultant_image_id']}").json()
    manifest = artifact_store.read_json(S3Location.parse(image["link"]["path"]))
    rootfs = next(a for a in manifest["artifacts"] if a["type"].startswith("application/vnd.cray.image.rootfs"))
    archive = tmp_path / "rootfs.sqsh"
    artifact_store.download_file(S3Location.parse(rootfs["link"]["path"]), archive)
    report = read_from_squashfs(archive, PROBE_FILE, tmp_path).decode()
    print(report)
    lines = dict(line.split(": ", 1) for line in report.strip().splitlines() if ": " in line)
    # It did leave the image root: kiwi's sandbox root has no /boot, the image has.
    assert "ROOT" in lines and " boot " not in f" {lines['ROOT']} ", report
    assert lines["DB"] == "absent" and "ims.sqlite3" not in lines["DATA"], report
    assert "server.log" not in lines["DATA"], report
    assert lines["SHADOW"] == "absent", report
    assert lines["SOURCE"] == "absent", report
    # The OCI default set plus CAP_SYS_ADMIN (kiwi's mounts), held in the sandbox's own user namespace.
    assert lines["CAPS"] == "CapEff:00000000a82425fb", report
    # Its own network (slirp4netns, no host loopback): packages came in, the host's services are out of reach.
    assert lines["NET_API"] == lines["NET_S3"] == lines["NET_GATEWAY"] == "unreachable", report
