"""Running the external tools a stage needs (squashfs-tools, ssh-keygen) with readable failures."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from ims.stages.reporting import Reporter, StageError

_TAIL_LINES = 20


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) or 1


def run_tool(argv: Sequence[str], reporter: Reporter, *, echo: bool = True, pass_fds: Sequence[int] = ()) -> str:
    """Run argv (never through a shell); its output goes to the job log; failure raises StageError."""
    try:
        result = subprocess.run(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            check=False,
            pass_fds=pass_fds,
        )
    except FileNotFoundError as exc:
        raise StageError(f"{argv[0]} is not installed") from exc
    output = result.stdout.strip()
    if echo and output:
        for line in output.splitlines():
            if line.strip():
                reporter.say(f"  {os.path.basename(argv[0])}: {line}")
    if result.returncode != 0:
        tail = "; ".join(line for line in output.splitlines()[-_TAIL_LINES:] if line.strip())
        raise StageError(f"{os.path.basename(argv[0])} exited with {result.returncode}: {tail[-800:]}")
    return output
