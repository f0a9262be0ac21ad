"""The host-wide kiwi build lock: a second build waits, says so, and starts when the first ends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ims.stages.kiwi_lock import kiwi_build_lock


def test_second_build_waits_for_the_first(tmp_path: Path) -> None:
    lock = tmp_path / "kiwi.lock"
    said: list[str] = []
    first_in = threading.Event()
    release = threading.Event()
    waited: list[float] = []

    def first() -> None:
        with kiwi_build_lock(lambda _: None, lock, poll_seconds=0.05):
            first_in.set()
            release.wait(10)

    def second() -> None:
        with kiwi_build_lock(said.append, lock, poll_seconds=0.05) as seconds:
            waited.append(seconds)

    holder = threading.Thread(target=first)
    holder.start()
    assert first_in.wait(10)
    waiter = threading.Thread(target=second)
    waiter.start()
    time.sleep(0.3)
    assert not waited and said and "another kiwi-ng build" in said[0]
    release.set()
    holder.join(10)
    waiter.join(10)
    assert waited and waited[0] >= 0.3
    assert "finished" in said[-1]


def test_an_unused_lock_is_taken_at_once(tmp_path: Path) -> None:
    said: list[str] = []
    with kiwi_build_lock(said.append, tmp_path / "kiwi.lock") as seconds:
        assert seconds < 0.5
    assert said == []
