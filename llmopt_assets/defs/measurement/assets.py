"""Measurements: perplexity runs repeated with time and energy, gathered into one table."""

import json
import math

import dagster as dg
import polars as pl
import torch

from llmopt_assets.defs.partitions import model_of_variant, variant_key, variant_partitions
from llmopt_assets.defs.resources import (
    ComputeResource,
    EnergyMeterResource,
    EvaluationProfileResource,
    ModelStoreResource,
)
from llmopt_assets.measure.corpus import load_tokens
from llmopt_assets.measure.perplexity import PerplexityProtocol
from llmopt_assets.measure.repetitions import RepetitionError, RepetitionProtocol
from llmopt_assets.measure.runs import measure_perplexity
from llmopt_assets.models.architecture import context_length
from llmopt_assets.techniques.loading import load_variant
from llmopt_assets.profiles import window_length



@dg.asset(
    partitions_def=variant_partitions,
    deps=["compressed_variant", dg.AssetDep("eval_corpus", partition_mapping=model_of_variant)],
    check_specs=[dg.AssetCheckSpec("perplexity_finite", asset="perplexity_run")],
    group_name="measurement",
    kinds={"pytorch", "polars"},
    pool="cpu",
)
def perplexity_run(
    context: dg.AssetExecutionContext,
    model_store: ModelStoreResource,
    compute: ComputeResource,
    energy_meter: EnergyMeterResource,
    profile: EvaluationProfileResource,
):
    """WikiText-2 perplexity of the variant, repeated N times after a warm-up; per repetition the
    perplexity, wall seconds and energy (with the meter and method that measured it)."""
    threads = compute.apply_threads()
    slug, technique = variant_key(context)
    store = model_store.store()
    evaluation = profile.get()
    manifest = store.manifest(slug, technique)
    model, _ = load_variant(store, manifest, dtype=compute.torch_dtype(), device=compute.resolved_device())
    length = window_length(evaluation, context_length(model))
    protocol = PerplexityProtocol(
        dataset="wikitext-2-raw-v1/test",
        joiner="\n\n",
        max_length=length,
        stride=length,
        dtype=compute.dtype,
        max_tokens=evaluation.max_tokens,
    )
    tokens = load_tokens(store.corpus_path(slug, "eval"))
    row_context = {
        "model": slug,
        "technique": technique,
        "fingerprint": manifest.fingerprint,
        "parent_fingerprint": manifest.parent_fingerprint or "",
        "recipe": json.dumps(manifest.recipe),
        "profile": evaluation.name,
        "device": compute.resolved_device(),
        "compute_dtype": compute.dtype,
        "run_id": context.run_id,
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
        cause = error.__cause__ or error
        hint = (
            " Out of memory: lower the profile's max_length or max_tokens, or use the bfloat16 dtype."
            if isinstance(cause, (MemoryError, torch.OutOfMemoryError)) else ""
        )
        raise dg.Failure(
            description=f"{slug}|{technique}: repetition failed after {len(error.completed)} completed "
            f"ones: {cause}.{hint} Earlier materializations are untouched.",
            metadata={"completed_repetitions": len(error.completed)},
        ) from error
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
            "perplexity": dg.MetadataValue.float(perplexity),
            "seconds_mean": dg.MetadataValue.float(sum(seconds) / len(seconds)),
            "joules_mean": dg.MetadataValue.float(sum(joules) / len(joules)) if has_energy else "unavailable",
            "energy_method": table["energy_method"][0],
            "energy_meter": table["energy_meter"][0],
            "repetitions": dg.MetadataValue.int(table.height),
            "scored_tokens": dg.MetadataValue.int(int(table["scored_tokens"][0])),
            "threads": dg.MetadataValue.int(threads),
            "protocol": dg.MetadataValue.json(protocol.to_dict()),
            "fingerprint": manifest.fingerprint,
        },
        data_version=dg.DataVersion(f"{manifest.fingerprint[:12]}-{evaluation.name}"),
    )
    yield dg.AssetCheckResult(
        check_name="perplexity_finite",
        passed=all(math.isfinite(p) for p in table["perplexity"].to_list()),
        metadata={"perplexity": dg.MetadataValue.float(perplexity)},
    )


@dg.asset(group_name="measurement", kinds={"polars"})
def measurements(context: dg.AssetExecutionContext, perplexity_run: pl.DataFrame) -> pl.DataFrame:
    """Every measured repetition of every variant, one row each, with model fingerprint, parent,
    recipe, protocol, meter, method and hardware: the table all scores and charts come from."""
    context.add_output_metadata(
        {
            "rows": dg.MetadataValue.int(perplexity_run.height),
            "variants": dg.MetadataValue.int(perplexity_run.select("model", "technique").unique().height),
        }
    )
    return perplexity_run
