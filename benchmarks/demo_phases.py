"""Benchmark 5 (issue 15): `make demo` wall time broken down by phase.

The demo prints one line per Dagster run it launches, `[  12.3 s] <job> <partition>: ok`;
this groups those lines by job (prepare models, students, variants, benchmarks, scoring), sums
them, and sets the sum against the demo's own total (`demo finished in N s`): the rest is start-up,
run launching and printing. Either runs the demo itself (in this checkout: it writes var/ and
dagster_home/ here), or reads the saved output of a demo run.

    TQDM_DISABLE=1 .venv/bin/python -m llmopt_assets.cli demo | tee demo.log
    .venv/bin/python benchmarks/demo_phases.py --log demo.log
    .venv/bin/python benchmarks/demo_phases.py --run -- --techniques base,int8-dyn,bf16 --no-benchmarks
"""

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RUN_LINE = re.compile(r"^\[\s*(?P<seconds>[\d.]+) s\] (?P<job>\S+) (?P<partition>\S+): (?P<status>\S+)")
TOTAL_LINE = re.compile(r"^demo finished in (?P<seconds>[\d.]+) s")


@dataclass
class Phase:
    job: str
    seconds: float = 0.0
    runs: int = 0
    failed: int = 0
    slowest: list[tuple[float, str]] = field(default_factory=list)


def parse(lines: list[str]) -> tuple[dict[str, Phase], float | None]:
    """Phases in order of first appearance, and the demo's own total (None if it did not finish)."""
    phases: dict[str, Phase] = {}
    total = None
    for line in lines:
        if match := RUN_LINE.match(line.strip()):
            phase = phases.setdefault(match["job"], Phase(match["job"]))
            seconds = float(match["seconds"])
            phase.seconds += seconds
            phase.runs += 1
            phase.failed += match["status"] != "ok"
            phase.slowest = sorted([*phase.slowest, (seconds, match["partition"])], reverse=True)[:3]
        elif match := TOTAL_LINE.match(line.strip()):
            total = float(match["seconds"])
    return phases, total


def report(phases: dict[str, Phase], total: float | None, measured_wall: float | None) -> str:
    if not phases:
        raise ValueError("no demo run lines ('[  12.3 s] <job> <partition>: ok') in the input")
    runs_sum = sum(p.seconds for p in phases.values())
    wall = total if total is not None else measured_wall
    rows = ["| phase (job) | runs | failed | seconds | share of the demo | slowest partitions |",
            "|---|---|---|---|---|---|"]
    for phase in phases.values():
        share = f"{phase.seconds / wall:.0%}" if wall else "n/a"
        slowest = ", ".join(f"{p} {s:.0f} s" for s, p in phase.slowest)
        rows.append(f"| {phase.job} | {phase.runs} | {phase.failed} | {phase.seconds:.0f} | {share} | {slowest} |")
    if wall:
        rows.append(f"| start-up, launching, printing | | | {wall - runs_sum:.0f} | {(wall - runs_sum) / wall:.0%} | |")
        rows.append(f"| **demo total** | {sum(p.runs for p in phases.values())} | | **{wall:.0f}** | 100% | |")
    else:
        rows.append(f"| runs total (the demo did not print its total) | | | {runs_sum:.0f} | | |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--log", type=Path, help="saved output of a demo run")
    source.add_argument("--run", action="store_true", help="run the demo here; arguments after -- go to it")
    args, demo_args = parser.parse_known_args()
    demo_args = [a for a in demo_args if a != "--"]
    measured_wall = None
    if args.log:
        lines = args.log.read_text().splitlines()
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import speed_common as common

        common.header("make demo wall time by phase")
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "llmopt_assets.cli", "demo", *demo_args],
            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
            env={**os.environ, "TQDM_DISABLE": "1"}, check=False,
        )
        measured_wall = time.perf_counter() - started
        lines = done.stdout.splitlines()
        print(f"demo {' '.join(demo_args) or '(defaults)'}: exit {done.returncode}, "
              f"{measured_wall:.0f} s measured from here\n")
    print(report(*parse(lines), measured_wall))


if __name__ == "__main__":
    main()
