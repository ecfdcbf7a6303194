"""Jobs (one per partitioning), the registry sensor that adds models, the re-benchmark schedule."""

from pathlib import Path

import dagster as dg

from llmopt_assets.defs.partitions import model_partitions, student_partitions, variant_partitions
from llmopt_assets.models.registry import read_registry
from llmopt_assets.paths import DEFAULT_REGISTRY

prepare_models_job = dg.define_asset_job(
    "prepare_models_job",
    selection=["base_model", "eval_corpus", "calibration_corpus", "distillation_corpus"],
    description="Per model: base weights into the store, tokenized corpora (evaluation, calibration, "
    "the students' training text).",
)
students_job = dg.define_asset_job(
    "students_job",
    selection=["distilled_student"],
    description="Per model × distillation recipe (kd, kd-rkl): the student the kd* variants start "
    "from. Only needed for those variants.",
)
variants_job = dg.define_asset_job(
    "variants_job",
    selection=["compressed_variant", "perplexity_run", "comparison_run"],
    description="Per model × technique: build the variant, measure its perplexity, compare its time "
    "and energy with the base's in one interleaved experiment (for `base`: the A/A control).",
)
benchmarks_job = dg.define_asset_job(
    "benchmarks_job",
    selection=["benchmark_run"],
    partitions_def=variant_partitions,
    description="Per model × technique: the lm-eval benchmark round on the variant as loaded.",
)
scoring_job = dg.define_asset_job(
    "scoring_job",
    selection=["measurements", "opt_scores", "trade_off_charts", "decision_report"],
    description="Gather every measurement, score the trade-offs, draw the charts, write the decision report.",
)

rebenchmark_schedule = dg.ScheduleDefinition(
    name="weekly_rescoring",
    job=scoring_job,
    cron_schedule="0 3 * * 1",
    description="Re-gather and re-score measurements weekly (full re-benchmarking arrives with "
    "the orchestration work: code/data versions decide what is stale).",
)

@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def model_registry_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Adds every model slug listed in models.yaml as a `model` partition; a malformed entry is
    reported (and skipped) without keeping the good ones out."""
    known = set(context.instance.get_dynamic_partitions(model_partitions.name))
    reading = read_registry(Path(DEFAULT_REGISTRY))
    for problem in reading.problems.values():
        context.log.warning(f"models.yaml entry skipped: {problem}")
    new = sorted(set(reading.specs) - known)
    return dg.SensorResult(
        dynamic_partitions_requests=[model_partitions.build_add_request(new)] if new else []
    )
