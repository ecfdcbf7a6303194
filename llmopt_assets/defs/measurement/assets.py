"""Measurements: the perplexity of each variant (quality, measured once), the paired time/energy
comparison of each variant with its base (Tc, Ec), gathered into one table."""

import json
import zlib

import dagster as dg
import polars as pl
import torch

from llmopt_assets.defs.partitions import model_of_variant, variant_key, variant_partitions
from llmopt_assets.defs.resources import (
    ComputeResource,
    EnergyMeterResource,
    device_step,
    EvaluationProfileResource,
    ModelStoreResource,
)
from llmopt_assets.measure.comparison import ArmRepetition, ComparisonError
from llmopt_assets.measure.corpus import load_tokens
from llmopt_assets.measure.hardware import hardware_fingerprint
from llmopt_assets.measure.perplexity_bounds import MAX_RATIO_TO_BASE, perplexity_verdict
from llmopt_assets.measure.repetitions import RepetitionError, RepetitionProtocol
from llmopt_assets.measure.runs import (
    COMPARISON_CODE_VERSION,
    MEASUREMENT_CODE_VERSION,
    measure_comparison,
    measure_perplexity,
)
from llmopt_assets.measure.stats import paired_ratio
from llmopt_assets.measure.versions import corpus_sha256, measurement_data_version
from llmopt_assets.models.architecture import context_length
from llmopt_assets.profiles import comparison_protocol, perplexity_protocol
from llmopt_assets.techniques.loading import load_variant
from llmopt_assets.techniques.recipe import BASE, parse
from llmopt_assets.techniques.variants import identical_variant


def _measurement_failure(what: str, error: Exception, completed: int) -> dg.Failure:
    cause = error.__cause__ or error
    hint = (
        " Out of memory: lower the profile's max_length or max_tokens, or use the bfloat16 dtype."
        if isinstance(cause, (MemoryError, torch.OutOfMemoryError)) else ""
    )
    return dg.Failure(
        description=f"{what}: repetition failed after {completed} completed ones: {cause}.{hint} "
        "Earlier materializations are untouched.",
        metadata={"completed_repetitions": completed},
    )


PERPLEXITY_PLAUSIBLE = dg.AssetCheckSpec(
    "perplexity_plausible",
    asset="perplexity_run",
    description="Fails when the perplexity is not finite or no better than a uniform guess over the "
    "vocabulary (perplexity >= vocab size): a broken variant. Warns when it is more than "
    f"{MAX_RATIO_TO_BASE:g}× the base's latest perplexity.",
)


@dg.asset(
    partitions_def=variant_partitions,
    deps=["compressed_variant", dg.AssetDep("eval_corpus", partition_mapping=model_of_variant)],
    check_specs=[PERPLEXITY_PLAUSIBLE],
    group_name="measurement",
    kinds={"pytorch", "polars"},
    code_version=MEASUREMENT_CODE_VERSION,
    **device_step("gpu"),
)
def perplexity_run(
    context: dg.AssetExecutionContext,
    model_store: ModelStoreResource,
    compute: ComputeResource,
    energy_meter: EnergyMeterResource,
    profile: EvaluationProfileResource,
):
    """WikiText-2 perplexity of the variant: the quality measurement, evaluated once (it is
    deterministic; the profile's `repetitions` may repeat it). Its seconds and energy are kept as
    information; Tc and Ec come from `comparison_run`, never from these unpaired timings."""
    slug, technique = variant_key(context)
    store = model_store.store()
    evaluation = profile.get()
    manifest = store.manifest(slug, technique)
    device = compute.prepare(context.log, manifest.parameter_count, f"{slug}|{technique}")
    threads = compute.apply_threads()
    model, _ = load_variant(store, manifest, dtype=compute.torch_dtype(), device=device)
    protocol = perplexity_protocol(evaluation, context_length(model), compute.dtype)
    tokens = load_tokens(store.corpus_path(slug, "eval"))
    corpus = corpus_sha256(store.corpus_path(slug, "eval"))
    hardware = hardware_fingerprint()
    row_context = {
        "model": slug,
        "technique": technique,
        "fingerprint": manifest.fingerprint,
        "parent_fingerprint": manifest.parent_fingerprint or "",
        "recipe": json.dumps(manifest.recipe),
        "profile": evaluation.name,
        "device": device,
        "compute_dtype": compute.dtype,
        "corpus_sha256": corpus,
        "code_version": MEASUREMENT_CODE_VERSION,
        "run_id": context.run.run_id,
        # The variant's memory as loaded (quantized weights at their packed size; pruned heads
        # gone), for the decision's memory constraint and Pareto front.
        "weights_bytes": model.get_memory_footprint(),
        "parameter_count": manifest.parameter_count,
        # The variant this one equals when a step changed nothing (kd+ah90 with no head removed
        # is kd), else None: the score table flags such a row as not a distinct technique.
        "identical_to": identical_variant(parse(technique), manifest.details),
    }
    meter = energy_meter.make()
    context.log.info(f"meter {meter.name}: {meter.probe()}")
    try:
        rows = measure_perplexity(
            model,
            tokens,
            protocol,
            meter,
            RepetitionProtocol(evaluation.warmup, evaluation.repetitions, evaluation.cooldown_seconds),
            row_context,
            on_repetition=lambda r: context.log.info(
                f"repetition {r.index}: ppl {r.value.perplexity:.3f}, {r.seconds:.2f} s, "
                + (f"{r.energy.joules:.1f} J" if r.energy.joules is not None else "energy unavailable")
                + f" ({r.energy.method})"
            ),
            power=energy_meter.power_range(),
        )
    except RepetitionError as error:
        raise _measurement_failure(f"{slug}|{technique}", error, len(error.completed)) from error
    finally:
        meter.close()  # stops a tracker's threads and releases NVML, even after a failure
    table = pl.DataFrame(rows, infer_schema_length=None)
    perplexity = table["perplexity"][0]
    seconds = table["seconds"].to_list()
    joules = table["joules"].to_list()
    has_energy = all(j is not None for j in joules)
    yield dg.Output(
        table,
        metadata={
            # Rounded for the UI (the table keeps every digit); units in the keys.
            "perplexity": dg.MetadataValue.float(round(perplexity, 3)),
            "seconds_mean [s]": dg.MetadataValue.float(round(sum(seconds) / len(seconds), 4)),
            "joules_mean [J]": (dg.MetadataValue.float(round(sum(joules) / len(joules), 3)) if has_energy
                                else "unavailable"),
            "energy_method": table["energy_method"][0],
            "energy_meter": table["energy_meter"][0],
            "repetitions": dg.MetadataValue.int(table.height),
            "scored_tokens": dg.MetadataValue.int(int(table["scored_tokens"][0])),
            "threads": dg.MetadataValue.int(threads),
            "protocol": dg.MetadataValue.json(protocol.to_dict()),
            "fingerprint": manifest.fingerprint,
            "hardware_fingerprint": hardware,
            "corpus_sha256": corpus or "unrecorded",
        },
        data_version=dg.DataVersion(
            measurement_data_version(
                fingerprint=manifest.fingerprint,
                corpus_sha256=corpus,
                protocol=protocol.to_dict(),
                profile=evaluation.to_dict(),
                device=compute.resolved_device(),
                hardware=hardware,
            )
        ),
    )
    yield perplexity_plausible(context, perplexity, model.config.vocab_size, slug, technique)


def perplexity_plausible(
    context: dg.AssetExecutionContext, perplexity: float, vocab_size: int, slug: str, technique: str
) -> dg.AssetCheckResult:
    base_perplexity = None
    if technique != BASE:
        # The base's perplexity as the instance last recorded it (None until the base is measured).
        base_key = dg.MultiPartitionKey({"model": slug, "technique": BASE})
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("perplexity_run"), asset_partitions=[str(base_key)]), limit=1
        ).records
        materialization = records[0].asset_materialization if records else None
        value = materialization.metadata.get("perplexity") if materialization else None
        base_perplexity = float(value.value) if value is not None else None
    verdict = perplexity_verdict(perplexity, vocab_size, base_perplexity)
    return dg.AssetCheckResult(
        check_name="perplexity_plausible",
        passed=verdict.plausible,
        severity=dg.AssetCheckSeverity.ERROR if verdict.broken else dg.AssetCheckSeverity.WARN,
        description="; ".join(verdict.reasons) or "finite, below the uniform guess, within bound of the base",
        metadata={
            "perplexity": dg.MetadataValue.float(round(perplexity, 3)),
            "uniform_guess_perplexity": dg.MetadataValue.int(vocab_size),
            "base_perplexity": dg.MetadataValue.float(round(base_perplexity, 3)) if base_perplexity else "not measured yet",
        },
    )


def _log_repetition(context: dg.AssetExecutionContext):
    def log(r: ArmRepetition) -> None:
        energy = f"{r.energy.joules:.1f} J" if r.energy.joules is not None else "energy unavailable"
        context.log.info(f"pair {r.pair} {r.arm}: {r.seconds:.3f} s, {energy} ({r.energy.method})")

    return log


@dg.asset(
    partitions_def=variant_partitions,
    deps=[
        "compressed_variant",
        dg.AssetDep("base_model", partition_mapping=model_of_variant),
        dg.AssetDep("eval_corpus", partition_mapping=model_of_variant),
    ],
    group_name="measurement",
    kinds={"pytorch", "polars"},
    code_version=COMPARISON_CODE_VERSION,
    **device_step("gpu"),
)
def comparison_run(
    context: dg.AssetExecutionContext,
    model_store: ModelStoreResource,
    compute: ComputeResource,
    energy_meter: EnergyMeterResource,
    profile: EvaluationProfileResource,
) -> dg.Output[pl.DataFrame]:
    """The variant and its base loaded side by side and timed and metered alternately (seeded
    ABBA/BAAB blocks) on the same windows, after calibrating each repetition to last at least
    the profile's minimum and warming up until the timing is stable: one row per pair and arm,
    the source of Tc and Ec. For technique `base` the variant is a second, separately loaded
    copy of the base: the A/A control, whose interval must cover 1."""
    slug, technique = variant_key(context)
    store = model_store.store()
    evaluation = profile.get()
    base_manifest, variant_manifest = store.manifest(slug, BASE), store.manifest(slug, technique)
    both = base_manifest.parameter_count + variant_manifest.parameter_count  # two models in memory
    device, dtype = compute.prepare(context.log, both, f"{slug}|{technique}"), compute.torch_dtype()
    threads = compute.apply_threads()
    # Exactly two models in memory, each loaded once through the same path (for `base`, the same
    # artifact twice: the control must measure two copies, not one model against itself).
    base, _ = load_variant(store, base_manifest, dtype=dtype, device=device)
    variant, _ = load_variant(store, variant_manifest, dtype=dtype, device=device)
    protocol = perplexity_protocol(evaluation, context_length(base), compute.dtype)
    experiment = comparison_protocol(evaluation, seed=zlib.crc32(f"{slug}|{technique}".encode()))
    corpus = corpus_sha256(store.corpus_path(slug, "eval"))
    hardware = hardware_fingerprint()
    row_context = {
        "model": slug,
        "technique": technique,
        "fingerprint": variant_manifest.fingerprint,
        "base_fingerprint": base_manifest.fingerprint,
        "variant_fingerprint": variant_manifest.fingerprint,
        "parent_fingerprint": variant_manifest.parent_fingerprint or "",
        "recipe": json.dumps(variant_manifest.recipe),
        "profile": evaluation.name,
        "device": device,
        "compute_dtype": compute.dtype,
        "corpus_sha256": corpus,
        "code_version": COMPARISON_CODE_VERSION,
        "run_id": context.run.run_id,
    }
    meter = energy_meter.make()
    context.log.info(f"meter {meter.name}: {meter.probe()}")
    try:
        rows, result = measure_comparison(
            base, variant, load_tokens(store.corpus_path(slug, "eval")), protocol, meter, experiment, row_context,
            on_repetition=_log_repetition(context), power=energy_meter.power_range(),
        )
    except ComparisonError as error:
        raise _measurement_failure(f"{slug}|{technique} comparison", error, len(error.completed)) from error
    finally:
        meter.close()
    calibration = result.calibration
    context.log.info(
        f"{calibration.units} windows per repetition after {len(calibration.rounds)} calibration/warm-up rounds "
        f"({'stable' if calibration.stable else 'NOT stable at the cap'})"
    )
    time_ratio = paired_ratio(result.values("variant"), result.values("base"))
    metadata = {
        "tc": dg.MetadataValue.float(time_ratio.ratio),
        "tc_ci95": dg.MetadataValue.json([time_ratio.ci95_low, time_ratio.ci95_high]),
        "tc_significant": time_ratio.significant,
        "pairs": dg.MetadataValue.int(experiment.pairs),
        "windows_per_repetition": dg.MetadataValue.int(calibration.units),
        "tokens_per_repetition": dg.MetadataValue.int(calibration.units * protocol.max_length),
        "warmup_stable": calibration.stable,
        "calibration": dg.MetadataValue.json(calibration.to_dict()),
        "protocol": dg.MetadataValue.json(experiment.to_dict()),
        "energy_method": rows[0]["energy_method"],
        "threads": dg.MetadataValue.int(threads),
        "a_a_control": technique == BASE,
        "base_fingerprint": base_manifest.fingerprint,
        "fingerprint": variant_manifest.fingerprint,
        "hardware_fingerprint": hardware,
        "corpus_sha256": corpus or "unrecorded",
    }
    base_joules, variant_joules = result.values("base", "joules"), result.values("variant", "joules")
    if None not in base_joules + variant_joules:
        energy_ratio = paired_ratio(variant_joules, base_joules)
        metadata["ec"] = dg.MetadataValue.float(energy_ratio.ratio)
        metadata["ec_ci95"] = dg.MetadataValue.json([energy_ratio.ci95_low, energy_ratio.ci95_high])
    return dg.Output(
        pl.DataFrame(rows, infer_schema_length=None),
        metadata=metadata,
        data_version=dg.DataVersion(
            measurement_data_version(
                fingerprint=f"{base_manifest.fingerprint}+{variant_manifest.fingerprint}",
                corpus_sha256=corpus,
                protocol={**protocol.to_dict(), **experiment.to_dict()},
                profile=evaluation.to_dict(),
                device=device,
                hardware=hardware,
            )
        ),
    )


@dg.asset(group_name="measurement", kinds={"polars"})
def measurements(
    context: dg.AssetExecutionContext, perplexity_run: pl.DataFrame, comparison_run: pl.DataFrame
) -> pl.DataFrame:
    """Every measurement, one row each, its kind in `measurement`: the perplexity runs (quality)
    and the paired comparisons (one row per pair and arm: time and energy), with fingerprints,
    recipe, protocol, meter, method and hardware: the table all scores and charts come from."""
    table = pl.concat([perplexity_run, comparison_run], how="diagonal_relaxed")
    context.add_output_metadata(
        {
            "rows": dg.MetadataValue.int(table.height),
            "variants": dg.MetadataValue.int(table.select("model", "technique").unique().height),
            "comparisons": dg.MetadataValue.int(comparison_run.select("model", "technique").unique().height),
        }
    )
    return table
