"""The main job on the embedded default: every technique on SmolLM2-135M (smoke profile), recorded
in the project's DAGSTER_HOME so `dagster dev` shows the runs afterwards.

    llmopt demo [--model smollm2-135m] [--techniques base,int8,...] [--profile smoke]
"""

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import dagster as dg
import transformers

from llmopt_assets.defs.partitions import model_partitions
from llmopt_assets.paths import DAGSTER_HOME, REPORTS_DIR, TABLES_DIR
from llmopt_assets.techniques.recipe import RecipeError, parse, technique_keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--techniques", default="all", help="comma-separated keys, or 'all'")
    parser.add_argument("--profile", default="smoke", choices=["smoke", "paper"])
    args = parser.parse_args(argv)
    try:
        techniques = technique_keys() if args.techniques == "all" else [parse(t).key for t in args.techniques.split(",")]
    except RecipeError as error:
        parser.error(str(error))
    unknown = [t for t in techniques if t not in technique_keys()]
    if unknown:
        parser.error(f"{', '.join(unknown)}: valid recipes, but not technique partitions; partitions: "
                     f"{', '.join(technique_keys())}")
    if "base" not in techniques:
        techniques.insert(0, "base")  # every ratio is against the base

    os.environ.setdefault("DAGSTER_HOME", str(DAGSTER_HOME))
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(model_partitions.name, [args.model])
    from llmopt_assets.definitions import defs

    definitions = defs()
    run_config = {
        "resources": {"profile": {"config": {"profile": args.profile}}},
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
    }

    def run(job_name: str, partition_key: str | dg.MultiPartitionKey | None) -> bool:
        job = definitions.resolve_job_def(job_name)
        started = time.perf_counter()
        result = job.execute_in_process(
            partition_key=partition_key, instance=instance, run_config=run_config, raise_on_error=False
        )
        label = partition_key if partition_key is not None else "all"
        status = "ok" if result.success else "FAILED"
        print(f"[{time.perf_counter() - started:6.1f} s] {job_name} {label}: {status}", flush=True)
        if not result.success:
            for event in result.all_events:
                if event.is_failure and event.step_failure_data is not None:
                    error = event.step_failure_data.error
                    root = error.cause or error
                    print(f"    {event.step_key}: {root.message.strip()[:400]}")
        return result.success

    demo_started = time.perf_counter()
    if not run("prepare_models_job", args.model):
        return 1
    # Students only for the distilled techniques asked for (kd, kd-rkl).
    for distillation in sorted({parse(t).parent_key for t in techniques} - {"base"}):
        if not run("students_job", dg.MultiPartitionKey({"model": args.model, "distillation": distillation})):
            return 1
    failed = [
        t
        for t in techniques
        if not run("variants_job", dg.MultiPartitionKey({"model": args.model, "technique": t}))
    ]
    scored = run("scoring_job", None)
    table = REPORTS_DIR / "opt_scores.md"
    if scored and table.is_file():
        print("\nopt scores (lower is better; Pc, Tc, Ec = variant / base):\n")
        print(table.read_text())
    print(f"demo finished in {time.perf_counter() - demo_started:.0f} s")
    print(f"results: {TABLES_DIR} (Parquet), {REPORTS_DIR / 'opt_scores.csv'}")
    print(f"charts:  {REPORTS_DIR}/*-trade-offs.png")
    print(f"UI:      DAGSTER_HOME={instance.root_directory} .venv/bin/dagster dev -w {Path('workspace.yaml')}")
    if failed:
        print(f"FAILED techniques: {', '.join(failed)}", file=sys.stderr)
    return 0 if scored and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
