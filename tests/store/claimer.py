"""A task-claiming process for the concurrency tests: `python -m tests.store.claimer DATABASE_URL OUT_FILE`.

It claims tasks until none is left, holds each a few milliseconds, completes it and appends
`task_id resource start_ns end_ns owner` to OUT_FILE.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ims.store.db import Database
from ims.tasks.queue import TaskQueue


def main(url: str, out: Path, hold: float = 0.003) -> None:
    database = Database(url)
    queue = TaskQueue(database)
    owner = f"claimer-{os.getpid()}"
    lines: list[str] = []
    idle_since: float | None = None
    try:
        while True:
            task = queue.claim(owner, lease_seconds=60)
            if task is None:
                # A task blocked behind another resource's running task is not claimable yet: wait for the end.
                if queue.pending_count() == 0:
                    break
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 60:
                    raise SystemExit("claimer: tasks stayed unclaimable for 60 s")
                time.sleep(0.002)
                continue
            idle_since = None
            start = time.time_ns()
            time.sleep(hold)
            end = time.time_ns()
            queue.complete(task.id, owner)
            lines.append(f"{task.id} {task.resource} {start} {end} {owner}\n")
    finally:
        out.write_text("".join(lines))
        database.dispose()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
