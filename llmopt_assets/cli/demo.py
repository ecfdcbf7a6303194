"""The main job on the embedded default: every technique on SmolLM2-135M (smoke profile).

    llmopt demo [--model smollm2-135m] [--techniques base,int8,...|all] [--profile smoke|paper]

Runs are created through the project's code location and recorded in its DAGSTER_HOME, so
`make ui` (dg dev) shows them on Overview and each job's page. Only what the requested
techniques need is built (no student unless a kd technique is asked for). A failed technique
is reported in one line and the others still run; the exit code is 1 if anything failed.
"""

import argparse
import os
import sys
import time
import warnings

from llmopt_assets.paths import DAGSTER_HOME, DEFAULT_REGISTRY, PROJECT_ROOT, REPORTS_DIR, STORE_DIR, TABLES_DIR
from llmopt_assets.techniques.recipe import BASE, RecipeError, parse, technique_keys

# The benchmark round (lm-eval) is minutes per variant on a CPU: the demo runs it on the base and
# a few variants, not on all of them.
BENCHMARK_TECHNIQUES = ("base", "nf4", "ah90")


def requested_techniques(spec: str, parser: argparse.ArgumentParser) -> list[str]:
    try:
        techniques = technique_keys() if spec == "all" else [parse(t).key for t in spec.split(",")]
    except RecipeError as error:
        parser.error(str(error))
    unknown = [t for t in techniques if t not in technique_keys()]
    if unknown:
        parser.error(
            f"{', '.join(unknown)}: valid recipes, but not technique partitions; partitions: "
            f"{', '.join(technique_keys())}"
        )
    techniques = list(dict.fromkeys(techniques))  # once each, in the order asked
    if BASE not in techniques:
        techniques.insert(0, BASE)  # every ratio is against the base
    return techniques


def students_needed(techniques: list[str]) -> list[str]:
    """The distillation recipes (kd, kd-rkl) whose students the techniques start from."""
    return sorted({parse(t).parent_key for t in techniques} - {BASE})


def quiet() -> None:
    """One message per event for a terminal user: no beta warnings, progress bars or HF chatter."""
    import dagster as dg
    import transformers

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llmopt demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="a slug from models.yaml")
    parser.add_argument("--techniques", default="all", help="comma-separated technique keys, or 'all'")
    parser.add_argument("--profile", default="smoke", choices=["smoke", "paper"])
    parser.add_argument("--no-benchmarks", action="store_true", help="skip the lm-eval benchmark round")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # read by tqdm when first imported
    techniques = requested_techniques(args.techniques, parser)

    # The model must be known before anything is written to the instance or the store.
    from llmopt_assets.models.registry import load_registry, resolve

    try:
        resolve(args.model, load_registry(DEFAULT_REGISTRY))
    except (KeyError, ValueError, FileNotFoundError) as error:
        parser.error(str(error.args[0] if isinstance(error, KeyError) else error))

    os.environ.setdefault("DAGSTER_HOME", str(DAGSTER_HOME))
    quiet()
    import dagster as dg

    from llmopt_assets.cli.runs import ProjectRuns, RunOutcome
    from llmopt_assets.defs.partitions import model_partitions

    from llmopt_assets.defs.pool_slots import free_slots_of_dead_runs

    instance = dg.DagsterInstance.get()
    # A run killed earlier (SIGKILL, the OOM killer) would hold its pool slot forever.
    for slot in free_slots_of_dead_runs(instance):
        print(f"freed {slot.describe()}", flush=True)
    instance.add_dynamic_partitions(model_partitions.name, [args.model])
    run_config = {
        "resources": {"profile": {"config": {"profile": args.profile}}},
        "loggers": {"progress": {"config": {"log_level": "INFO"}}},
        # Steps run in this process, one after another (the cpu pool serializes measurements anyway).
        "execution": {"config": {"in_process": {}}},
    }
    outcomes: list[RunOutcome] = []
    started = time.perf_counter()

    with ProjectRuns(instance, PROJECT_ROOT / "workspace.yaml", run_config) as runs:

        def run(job: str, partition: "str | dg.MultiPartitionKey | None" = None) -> bool:
            outcome = runs.run(job, partition)
            outcomes.append(outcome)
            status = "ok" if outcome.success else "FAILED"
            print(f"[{outcome.seconds:6.1f} s] {job} {outcome.partition or 'all'}: {status}", flush=True)
            for line in outcome.failures:
                print(f"    {line}", flush=True)
            return outcome.success

        if not run("prepare_models_job", args.model):
            return finish(outcomes, started, instance, scored=False)
        students = students_needed(techniques)
        if students and runs.has_job("students_job"):
            for distillation in students:
                run("students_job", dg.MultiPartitionKey({"model": args.model, "distillation": distillation}))
        for technique in techniques:
            run("variants_job", dg.MultiPartitionKey({"model": args.model, "technique": technique}))
        if not args.no_benchmarks and runs.has_job("benchmarks_job"):
            for technique in (t for t in BENCHMARK_TECHNIQUES if t in techniques):
                run("benchmarks_job", dg.MultiPartitionKey({"model": args.model, "technique": technique}))
        scored = run("scoring_job")
    return finish(outcomes, started, instance, scored)


def print_decision() -> None:
    """The report's summary: which technique for energy, runtime and balance, and how sure."""
    import polars as pl

    from llmopt_assets.scoring.report import summary_lines

    scores = REPORTS_DIR / "opt_scores.csv"
    if scores.is_file():
        print("decision:")
        for line in summary_lines(pl.read_csv(scores, infer_schema_length=None)):
            print(f"  {line.replace('**', '')}")
        print()


def finish(outcomes: list, started: float, instance: object, scored: bool) -> int:
    table = REPORTS_DIR / "opt_scores.md"
    if scored and table.is_file():
        print("\nopt scores (lower is better; Pc, Tc, Ec = variant / base):\n")
        print(table.read_text())
        print_decision()
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    print(f"results: {TABLES_DIR} (Parquet), {REPORTS_DIR / 'opt_scores.csv'}")
    print(f"report:  {REPORTS_DIR / 'decision_report.html'} (and .md)")
    print(f"charts:  {REPORTS_DIR}/")
    print(f"weights: {STORE_DIR}")
    print(f"UI:      make ui   (DAGSTER_HOME={instance.root_directory} dg dev), then http://localhost:3000")
    failed = [o for o in outcomes if not o.success]
    if failed:
        print("\nFAILED:", file=sys.stderr)
        for outcome in failed:
            print(f"  {outcome.job} {outcome.partition or 'all'} (run {outcome.run_id[:8]})", file=sys.stderr)
            for line in outcome.failures:
                print(f"      {line}", file=sys.stderr)
    return 0 if scored and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
