"""Issue 11 in one command: reads, conditional requests, writes and a customize job, each against the original's
figure and the machine's limit measured in the same run, in one table.

Usage (from the repository root, as root; needs `wrk` from apt):

    .venv/bin/python bench/issue11.py                       # 5 s per API phase, 3 customize runs
    .venv/bin/python bench/issue11.py --duration 10 --runs 1 --json out.json

It runs bench/reads_bench.py (10,000 images, `ims serve` as it runs by default) and then bench/customize_job.py
(a 1 GB root), each in its own process, and prints their own output as they go, then the table. A goal is
"met" when every measured run meets it; the load average at each phase is in the table, because this machine
is shared and figures taken under load are lower bounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from reads_bench import ORIGINAL  # noqa: E402 - the original's figures, one copy

# What each scenario must reach against the original (issue 11): req/s at least, p99 at most.
RPS_GOALS = {"list": 10.0, "get": 1.5, "jobs": 1.5, "create": 30.0, "patch": 30.0, "delete": 30.0}
P99_GOALS = {"list": 0.1, "get": 1.0, "jobs": 1.0}


def scenario(name: str) -> str | None:
    """Which of the original's scenarios a reads_bench phase is measured against (None: not one of them)."""
    if "304" in name or "after a write" in name:
        return None
    for key, words in (("list", "list 10"), ("get", "get one"), ("jobs", "jobs list"), ("create", "create"),
                       ("patch", "patch"), ("delete", "delete")):
        if name.startswith(words):
            return key
    return None


def api_rows(phases: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for phase in phases:
        if phase["target"] != "ims":
            continue
        key = scenario(phase["name"])
        limit = phase.get("limit") or {}
        ours = f"{phase['rps']:,.0f}/s, p99 {phase['p99_ms']:.1f} ms"
        if key is None:
            rows.append([phase["name"], str(phase["connections"]), ours, "–", "–", "–", "–", "–", phase["load"]])
            continue
        original_rps, original_p99 = ORIGINAL[key]
        times = phase["rps"] / original_rps
        verdicts = [times >= RPS_GOALS[key]]
        goal = f"≥{RPS_GOALS[key]:g}× req/s"
        p99_ratio = "–"
        if original_p99 is not None:
            p99_ratio = f"{phase['p99_ms'] / original_p99:.3f}"
            verdicts.append(phase["p99_ms"] / original_p99 <= P99_GOALS[key])
            goal += f", p99 ≤{P99_GOALS[key]:g}×"
        limit_text, limit_ratio = "–", "–"
        if limit:
            limit_text = f"{limit['name']}: {limit['rps']:,.0f}/s"
            limit_ratio = f"{phase['rps'] / limit['rps']:.2f}×"
            if key in ("create", "patch", "delete"):
                verdicts.append(phase["rps"] / limit["rps"] >= 0.5)
                goal += ", ≥0.5× raw commit"
        rows.append(
            [
                phase["name"],
                str(phase["connections"]),
                ours,
                f"{times:,.1f}×",
                p99_ratio,
                f"{limit_text} → {limit_ratio}",
                goal,
                "met" if all(verdicts) else "**not met**",
                phase["load"],
            ]
        )
    return rows


def customize_rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    if not runs:
        return []
    rows = []
    for label, job, limit, limit_name in (
        ("customize: POST → waiting_on_user", "waiting", "prepare_limit", "raw curl + raw unsquashfs"),
        ("customize: complete → success", "success", "package_limit", "max(raw mksquashfs, raw upload)"),
        ("customize: complete → success", "success", "cpu_floor", "CPU floor of mksquashfs + upload"),
        ("customize: complete → success", "success", "package_at_once", "raw mksquashfs and upload at once"),
    ):
        ratios = [run[job] / run[limit] for run in runs]
        rows.append(
            [
                label,
                "1",
                f"median {statistics.median(run[job] for run in runs):.2f} s",
                "–",
                "–",
                f"{limit_name}: median {statistics.median(run[limit] for run in runs):.2f} s → "
                + ", ".join(f"{ratio:.2f}×" for ratio in ratios),
                "≤1.2× the limit",
                "met" if all(ratio <= 1.2 for ratio in ratios) else "**not met**",
                "; ".join(str(run["load"]) for run in runs),
            ]
        )
    return rows


def table(rows: list[list[str]]) -> str:
    header = ["scenario", "conns", "ours", "× original", "p99 / original's", "machine limit → ours / limit", "goal",
              "verdict", "load"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per API phase")
    parser.add_argument("--runs", type=int, default=3, help="customize jobs")
    parser.add_argument("--skip-customize", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ims-issue11-") as scratch:
        reads_json, customize_json = Path(scratch) / "reads.json", Path(scratch) / "customize.json"
        reads = subprocess.run(
            [sys.executable, str(BENCH / "reads_bench.py"), "--duration", str(args.duration), "--json", str(reads_json)]
        )
        if reads.returncode != 0 or not reads_json.exists():
            print("issue11: reads_bench failed", file=sys.stderr)
            return 1
        phases = json.loads(reads_json.read_text())
        runs: list[dict[str, Any]] = []
        if not args.skip_customize:
            customize = subprocess.run(
                [sys.executable, str(BENCH / "customize_job.py"), "--runs", str(args.runs), "--json",
                 str(customize_json)]
            )
            if customize.returncode != 0 or not customize_json.exists():
                print("issue11: customize_job failed", file=sys.stderr)
                return 1
            runs = json.loads(customize_json.read_text())
    print("\n## Issue 11: every goal in one table\n")
    print(table(api_rows(phases) + customize_rows(runs)))
    if args.json is not None:
        args.json.write_text(json.dumps({"api": phases, "customize": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
