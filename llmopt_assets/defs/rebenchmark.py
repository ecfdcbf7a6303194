"""Re-benchmarks that run themselves: a weekly schedule that re-times every built variant, and a
sensor that re-measures a variant when its weights, the measuring code or the hardware changed
since it was measured. Run keys name the partition and what it is measured on, so the same
re-measurement is never asked twice."""

import dagster as dg

from llmopt_assets.measure.hardware import hardware_fingerprint
from llmopt_assets.measure.remeasure import MeasurementBasis, remeasure_reasons

VARIANT = dg.AssetKey("compressed_variant")
BASE_MODEL = dg.AssetKey("base_model")
PERPLEXITY = dg.AssetKey("perplexity_run")
COMPARISON = dg.AssetKey("comparison_run")
CODE_VERSION_TAG = "dagster/code_version"
ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED]

remeasure_job = dg.define_asset_job(
    "remeasure_job",
    selection=["perplexity_run", "comparison_run"],
    description="Per model × technique: measure an already built variant again (quality, and time "
    "and energy against its base), without rebuilding it.",
)


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> dg.AssetMaterialization | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return records[0].asset_materialization if records else None


def _text(materialization: dg.AssetMaterialization | None, name: str) -> str | None:
    if materialization is None or name not in materialization.metadata:
        return None
    return str(materialization.metadata[name].value)


def _recorded(measurement: dg.AssetMaterialization, paired: bool) -> MeasurementBasis:
    fingerprint = _text(measurement, "fingerprint")
    if paired:
        fingerprint = f"{_text(measurement, 'base_fingerprint')}+{fingerprint}"
    return MeasurementBasis(
        fingerprints=fingerprint,
        code_version=(measurement.tags or {}).get(CODE_VERSION_TAG),
        hardware=_text(measurement, "hardware_fingerprint"),
    )


def _in_flight_partitions(instance: dg.DagsterInstance) -> set[str]:
    """Partitions a queued or running run is working on: measured there, not asked again."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE))
    return {run.tags["dagster/partition"] for run in runs if "dagster/partition" in run.tags}


@dg.sensor(
    job=remeasure_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def remeasure_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Re-measures a built variant whose measurement no longer describes it: its weights were
    rebuilt, the measuring code's version was bumped, or this machine's hardware is not the one
    it was measured on. A variant never measured is left to variants_job."""
    instance = context.instance
    graph = context.repository_def.asset_graph
    hardware = hardware_fingerprint()
    busy = _in_flight_partitions(instance)
    requests, skipped = [], []
    for partition in sorted(instance.get_materialized_partitions(VARIANT)):
        if partition in busy:
            skipped.append(f"{partition}: a run is working on it")
            continue
        variant = _text(_latest(instance, VARIANT, partition), "fingerprint")
        model = partition.split("|")[0]
        base = _text(_latest(instance, BASE_MODEL, model), "fingerprint")
        assets, reasons, keys = [], [], []
        for key, paired in ((PERPLEXITY, False), (COMPARISON, True)):
            measurement = _latest(instance, key, partition)
            if measurement is None or not graph.has(key):
                continue
            current = MeasurementBasis(
                fingerprints=f"{base}+{variant}" if paired else variant,
                code_version=graph.get(key).code_version,
                hardware=hardware,
            )
            why = remeasure_reasons(_recorded(measurement, paired), current)
            if why:
                assets.append(key)
                reasons.append(f"{key.to_user_string()}: {'; '.join(why)}")
                keys.append(f"{key.to_user_string()}@{current.key()}")
        if assets:
            context.log.info(f"re-measure {partition}: {' | '.join(reasons)}")
            requests.append(
                dg.RunRequest(
                    run_key=f"remeasure:{partition}:{','.join(keys)}",
                    partition_key=partition,
                    asset_selection=assets,
                    tags={"llmopt/remeasure_reason": " | ".join(reasons)[:1000]},
                )
            )
    if not requests:
        reason = "every measured variant was measured on its current weights, code and hardware"
        return dg.SensorResult(skip_reason=reason + (f" ({'; '.join(skipped)})" if skipped else ""))
    return dg.SensorResult(run_requests=requests)


@dg.schedule(job=remeasure_job, cron_schedule="0 2 * * 0", default_status=dg.DefaultScheduleStatus.STOPPED)
def weekly_rebenchmark(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    """Every Sunday at 02:00, times and meters every built variant against its base again
    (comparison_run), one run per partition: time and energy drift with the machine (thermal
    state, updates, other load), perplexity does not, so it is re-measured by the sensor only.
    Run keys carry the tick's date: a tick never asks for a partition twice."""
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    partitions = sorted(context.instance.get_materialized_partitions(VARIANT))
    if not partitions:
        return dg.SkipReason("no variant is built yet: nothing to re-measure")
    return [
        dg.RunRequest(run_key=f"rebenchmark:{day}:{partition}", partition_key=partition, asset_selection=[COMPARISON])
        for partition in partitions
    ]
