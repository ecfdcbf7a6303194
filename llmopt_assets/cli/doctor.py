"""llmopt doctor: find what crashes and bad disks left behind; repair it with --repair.

    llmopt doctor [--repair] [--store var/store] [--dagster-home dagster_home]

Checks the model store (staging and versions of killed writers, dangling pointers, weights that
do not match their manifest, derived artifacts whose parent weights changed, unreadable corpora,
lock files of deleted artifacts) and the Dagster instance (pool slots held by runs that ended or
whose process is gone). Exit code: 0 healthy (or everything found was repaired), 1 problems
remain, 2 bad arguments.
"""

import argparse
import os
import sys
from pathlib import Path

from llmopt_assets.models.doctor import inspect_store, repair_store
from llmopt_assets.models.store import ModelStore
from llmopt_assets.paths import DAGSTER_HOME, STORE_DIR


def _pool_slots(dagster_home: Path, repair: bool) -> tuple[list[str], int]:
    """Lines to print and how many leaked slots remain."""
    if not (dagster_home / "dagster.yaml").is_file():
        return [f"pool slots: no Dagster instance at {dagster_home} (no dagster.yaml): skipped"], 0
    import warnings

    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    from llmopt_assets.defs.pool_slots import find_leaked_slots, free_leaked_slots

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        leaked = find_leaked_slots(instance)
        if not leaked:
            return ["pool slots: none held by a dead run"], 0
        if not repair:
            return [f"leaked-pool-slot: {slot.describe()}" for slot in leaked], len(leaked)
        return [f"freed: {slot.describe()}" for slot in free_leaked_slots(instance, leaked)], 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmopt doctor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=STORE_DIR)
    parser.add_argument("--dagster-home", type=Path, default=Path(os.environ.get("DAGSTER_HOME", DAGSTER_HOME)))
    parser.add_argument("--repair", action="store_true", help="remove / re-point / free what was found")
    args = parser.parse_args(argv)

    store = ModelStore(args.store)
    findings = inspect_store(store)
    for finding in findings:
        print(f"{finding.describe()}\n    repair: {finding.repair}")
    remaining = len(findings)
    if args.repair and findings:
        repaired = repair_store(store, findings)
        remaining -= len(repaired)
        print(f"repaired {len(repaired)} of {len(findings)} store problems"
              + ("" if not remaining else " (the rest belong to a commit under way: run again)"))
    if not findings:
        print(f"store {args.store}: healthy")
    lines, leaked = _pool_slots(args.dagster_home, args.repair)
    print("\n".join(lines))
    remaining += leaked
    if remaining and not args.repair:
        print(f"{remaining} problem(s): run `llmopt doctor --repair` to fix them")
    return 1 if remaining else 0


if __name__ == "__main__":
    sys.exit(main())
