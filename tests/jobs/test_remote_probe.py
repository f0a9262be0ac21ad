"""Readiness of a remote build node from its probe's answer (the node contract), without a node."""

from __future__ import annotations

import json

from ims.jobs.remote_probe import PROBE, interpret

TOOLS = {"unsquashfs": "/usr/bin/unsquashfs", "mksquashfs": "/usr/bin/mksquashfs", "bwrap": "/usr/bin/bwrap"}


def answer(**changes: object) -> bytes:
    facts: dict[str, object] = {
        "arch": "aarch64",
        "python": [3, 11, 2],
        "tools": {**TOOLS, "kiwi-ng": "/usr/bin/kiwi-ng"},
        "jobs": ["ims_1", "ims_2"],
        "boot": "b",
        "emulated": [],
    }
    facts.update(changes)
    return json.dumps(facts).encode()


def test_a_node_that_meets_the_contract() -> None:
    status = interpret("n1", answer())
    assert status.public() == {
        "xname": "n1",
        "sshStatus": "SSH connection established.",
        "podmanStatus": "Job tools present: python3 3.11.2, squashfs-tools, bubblewrap, kiwi-ng.",
        "nodeArch": "aarch64",
        "numCurrentJobs": 2,
        "ableToRunJobs": True,
    }
    assert status.can_create


def test_without_kiwi_only_customize_jobs() -> None:
    status = interpret("n1", answer(tools={**TOOLS, "kiwi-ng": None}))
    assert status.ready and not status.can_create
    assert "no kiwi-ng (customize jobs only)" in status.public()["podmanStatus"]


def test_missing_tools_and_old_python_are_named() -> None:
    status = interpret("n1", answer(python=[3, 9, 2], tools={"unsquashfs": None, "mksquashfs": None, "bwrap": None}))
    assert not status.ready and not status.can_create
    text = status.public()["podmanStatus"]
    assert text.startswith("Job tools not usable: ")
    assert "python3 3.9.2 is older than 3.11" in text and "bubblewrap" in text and "squashfs-tools" in text
    assert status.public()["ableToRunJobs"] is False


def test_an_unreadable_answer_is_not_ready() -> None:
    status = interpret("n1", b"Welcome to the node!\nnot json")
    assert not status.ready and status.public()["podmanStatus"].startswith("Unknown")


def test_the_probe_program_runs_here() -> None:
    namespace: dict[str, object] = {}
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(PROBE, "probe", "exec"), namespace)  # noqa: S102 - our own constant program
    status = interpret("here", out.getvalue().encode())
    assert status.reachable and status.arch
