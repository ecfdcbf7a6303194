"""Jobs (one per partitioning), the registry sensor that adds models, the weekly re-scoring."""

from pathlib import Path

import dagster as dg

from llmopt_assets.defs.partitions import model_partitions, student_partitions, variant_partitions
from llmopt_assets.defs.resources import ModelRegistryResource
from llmopt_assets.models.registry import read_registry
from llmopt_assets.models.sources import unavailable_reason

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
    description="Per model × technique: the lm-eval benchmark round on the variant as loaded.",
)
scoring_job = dg.define_asset_job(
    "scoring_job",
    selection=["measurements", "opt_scores", "trade_off_charts", "decision_report"],
    description="Gather every measurement, score the trade-offs, draw the charts, write the decision report.",
)

rescoring_schedule = dg.ScheduleDefinition(
    name="weekly_rescoring",
    job=scoring_job,
    cron_schedule="0 3 * * 1",
    description="Re-gather and re-score every measurement weekly, after the Sunday re-benchmark "
    "(defs/rebenchmark.py) has re-timed the variants.",
)


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def model_registry_sensor(context: dg.SensorEvaluationContext, registry: ModelRegistryResource) -> dg.SensorResult:
    """Adds each model of the registry (the `registry` resource's file) that this machine can
    load as a `model` partition. The others (a hub model without network or cache, a missing
    local directory) are offered, not added, so they never show as permanently missing: the
    tick's message says which and why; add one from the UI once it can be loaded. A malformed
    entry is reported (and skipped) without keeping the good ones out."""
    known = set(context.instance.get_dynamic_partitions(model_partitions.name))
    reading = read_registry(Path(registry.path))
    for problem in reading.problems.values():
        context.log.warning(f"{registry.path}: entry skipped: {problem}")
    new, offered = [], []
    for slug, spec in sorted(reading.specs.items()):
        if slug in known:
            continue
        reason = unavailable_reason(spec)
        if reason is None:
            new.append(slug)
        else:
            offered.append(f"{slug} ({reason})")
    message = None
    if offered:
        message = f"offered, not added (this machine cannot load them now): {'; '.join(offered)}"
        context.log.info(message)
    return dg.SensorResult(
        dynamic_partitions_requests=[model_partitions.build_add_request(new)] if new else [],
        skip_reason=message,
    )
