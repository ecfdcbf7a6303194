"""The benchmark round: the paper's five lm-eval benchmarks on each variant as it is loaded."""

import json

import dagster as dg
import polars as pl

from llmopt_assets.defs.partitions import variant_key, variant_partitions
from llmopt_assets.defs.resources import ComputeResource, EvaluationProfileResource, ModelStoreResource, device_step
from llmopt_assets.measure.benchmarks import CODE_VERSION, impossible_scores, run_benchmarks
from llmopt_assets.measure.versions import measurement_data_version
from llmopt_assets.paths import DATA_DIR
from llmopt_assets.techniques.loading import load_variant


@dg.asset(
    partitions_def=variant_partitions,
    deps=["compressed_variant"],
    check_specs=[
        dg.AssetCheckSpec(
            "every_benchmark_scored", asset="benchmark_run",
            description="Every benchmark the profile names produced a score (a failure names its reason).",
        ),
        dg.AssetCheckSpec(
            "scores_possible_for_item_count", asset="benchmark_run",
            description="Each score is a fraction in [0, 1] and, where it counts items, a multiple of 1/items.",
        ),
    ],
    group_name="measurement",
    kinds={"pytorch", "polars"},
    code_version=CODE_VERSION,
    **device_step("gpu"),
)
def benchmark_run(
    context: dg.AssetExecutionContext,
    model_store: ModelStoreResource,
    compute: ComputeResource,
    profile: EvaluationProfileResource,
):
    """The profile's lm-eval benchmarks (arc_challenge 25-shot acc_norm, hellaswag 10-shot
    acc_norm, mmlu 5-shot acc, truthfulqa_mc2 0-shot, winogrande 5-shot acc) on the variant as
    loaded (quantized, head-pruned), one row per benchmark: score, stderr, items, chance level,
    lm-eval and task versions, task hash, wall time and loglikelihood tokens/s. By default each
    item's shared context runs once and its choices are scored from the KV cache
    (`lm_eval_model: hflm-prefix-cache`); the profile's `benchmark_lm_eval_model: hflm` runs
    lm-eval's plain HFLM instead."""
    slug, technique = variant_key(context)
    store = model_store.store()
    evaluation = profile.get()
    manifest = store.manifest(slug, technique)
    device = compute.prepare(context.log, manifest.parameter_count, f"{slug}|{technique}")
    threads = compute.apply_threads()
    model, tokenizer = load_variant(store, manifest, dtype=compute.torch_dtype(), device=device)
    scores, failures = run_benchmarks(
        model,
        tokenizer,
        evaluation.benchmarks,
        evaluation.benchmark_limits,
        source=evaluation.benchmark_source,
        data_dir=DATA_DIR,
        batch_size=evaluation.benchmark_batch_size,
        lm_eval_model=evaluation.benchmark_lm_eval_model,
        on_score=lambda s: context.log.info(
            f"{s.benchmark}: {s.metric} {s.value:.4f} ± {s.stderr if s.stderr is not None else float('nan'):.4f} "
            f"over {s.items} items (chance {s.chance:.3f}), {s.seconds:.1f} s"
        ),
    )
    for name, reason in failures.items():
        context.log.error(f"{name} produced no score: {reason}")
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
    table = pl.DataFrame([{**row_context, **s.to_dict()} for s in scores], infer_schema_length=None)
    metadata: dict = {
        s.benchmark: dg.MetadataValue.float(s.value) for s in scores
    } | {
        "benchmarks_scored": dg.MetadataValue.int(len(scores)),
        "seconds_total": dg.MetadataValue.float(sum(s.seconds for s in scores)),
        "threads": dg.MetadataValue.int(threads),
        "lm_eval_version": scores[0].lm_eval_version if scores else "unknown",
        # hflm | hflm-prefix-cache: how the loglikelihood requests were run (same values)
        "lm_eval_model": evaluation.benchmark_lm_eval_model,
        "scores": dg.MetadataValue.json([s.to_dict() for s in scores]),
        "fingerprint": manifest.fingerprint,
    }
    version = measurement_data_version(
        fingerprint=manifest.fingerprint,
        corpus_sha256=None,  # the benchmark data is named by each score's task hash
        protocol={
            "lm_eval": metadata["lm_eval_version"],
            "lm_eval_model": evaluation.benchmark_lm_eval_model,
            "task_hashes": sorted(s.task_hash for s in scores),
        },
        profile=evaluation.to_dict(),
        device=compute.resolved_device(),
        hardware=compute.dtype,
    )
    yield dg.Output(table, metadata=metadata, data_version=dg.DataVersion(version))
    missing = [n for n in evaluation.benchmarks if n not in {s.benchmark for s in scores}]
    yield dg.AssetCheckResult(
        check_name="every_benchmark_scored",
        passed=not missing,
        metadata={"missing": dg.MetadataValue.json({n: failures.get(n, "no score") for n in missing})},
    )
    impossible = impossible_scores(scores)
    yield dg.AssetCheckResult(
        check_name="scores_possible_for_item_count",
        passed=not impossible,
        metadata={"impossible": dg.MetadataValue.json(impossible)},
    )
