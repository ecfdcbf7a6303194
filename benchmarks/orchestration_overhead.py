"""Benchmark 4 (issue 15): what Dagster costs. One perplexity_run partition materialized through
Dagster (dg.materialize: run, step, resources, IO manager writing the parquet table, check,
event log) against the bare core calls the asset body makes (load_variant, load_tokens,
measure_perplexity) with the same store, protocol, meter and threads. Target: ≤ 10% overhead.

The project is a temporary copy: SmolLM2-135M (cached safetensors) as a local registry entry,
the smoke profile, one repetition; the base model, corpora and base variant are prepared first,
untimed. Rounds alternate which path goes first; medians are reported.

    .venv/bin/python benchmarks/orchestration_overhead.py [--rounds 5] [--max-tokens 1024]
"""

import argparse
import tempfile
import time
from pathlib import Path

import dagster as dg

import speed_common as common
from llmopt_assets.defs.data.assets import calibration_corpus, eval_corpus
from llmopt_assets.defs.measurement.assets import perplexity_run
from llmopt_assets.defs.models.assets import base_model, compressed_variant
from llmopt_assets.defs.resources import (
    ComputeResource,
    EvaluationProfileResource,
    project_resources,
)
from llmopt_assets.measure.corpus import load_tokens
from llmopt_assets.measure.repetitions import RepetitionProtocol
from llmopt_assets.measure.runs import measure_perplexity
from llmopt_assets.models.architecture import context_length
from llmopt_assets.profiles import perplexity_protocol
from llmopt_assets.techniques.loading import load_variant

MODEL = "smollm2-local"


def bare_core_call(resources: dict) -> float:
    """The perplexity_run body's work without Dagster: seconds."""
    started = time.perf_counter()
    compute, profile = resources["compute"], resources["profile"].get()
    compute.apply_threads()
    store = resources["model_store"].store()
    manifest = store.manifest(MODEL, "base")
    model, _ = load_variant(store, manifest, dtype=compute.torch_dtype(), device=compute.resolved_device())
    protocol = perplexity_protocol(profile, context_length(model), compute.dtype)
    tokens = load_tokens(store.corpus_path(MODEL, "eval"))
    meter = resources["energy_meter"].make()
    try:
        measure_perplexity(
            model, tokens, protocol, meter,
            RepetitionProtocol(profile.warmup, profile.repetitions, profile.cooldown_seconds),
            {"model": MODEL, "technique": "base"}, power=resources["energy_meter"].power_range(),
        )
    finally:
        meter.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=1024)
    args = parser.parse_args()
    common.header("Orchestration overhead: one perplexity_run partition, Dagster vs the bare core call")
    weights = common.weights_dir()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        registry = root / "models.yaml"
        registry.write_text(f"models:\n  {MODEL}:\n    source: local\n    path: {weights}\n")
        resources = project_resources(
            root, EvaluationProfileResource(profile="smoke", repetitions=1, max_tokens=args.max_tokens), ComputeResource()
        )
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("model", [MODEL])
        prepared = dg.materialize([base_model, eval_corpus, calibration_corpus], partition_key=MODEL,
                                  resources=resources, instance=instance)
        key = dg.MultiPartitionKey({"model": MODEL, "technique": "base"})
        variant = dg.materialize([compressed_variant], partition_key=key, resources=resources, instance=instance)
        assert prepared.success and variant.success

        def through_dagster() -> float:
            started = time.perf_counter()
            result = dg.materialize([compressed_variant, perplexity_run], partition_key=key, resources=resources,
                                    instance=instance, selection=[perplexity_run])
            assert result.success
            return time.perf_counter() - started

        timings: dict[str, list[float]] = {"dagster": [], "bare": []}
        for round_index in range(args.rounds):
            order = ("dagster", "bare") if round_index % 2 == 0 else ("bare", "dagster")
            for path in order:
                timings[path].append(through_dagster() if path == "dagster" else bare_core_call(resources))
    dagster, bare = common.median(timings["dagster"]), common.median(timings["bare"])
    # Each round is a pair run back to back: its difference cancels the machine's slow drift.
    extra = sorted(d - b for d, b in zip(timings["dagster"], timings["bare"]))
    print(f"smoke profile, {args.max_tokens} tokens, 1 repetition, {args.rounds} alternating rounds\n")
    print("| path | seconds, median (rounds) |")
    print("|---|---|")
    for path, seconds in (("dg.materialize(perplexity_run)", dagster), ("bare core calls", bare)):
        rounds = ", ".join(f"{s:.2f}" for s in timings["dagster" if path.startswith("dg") else "bare"])
        print(f"| {path} | {seconds:.2f} ({rounds}) |")
    print(f"\noverhead: {dagster - bare:+.2f} s, {dagster / bare - 1:+.1%} (target <= +10%)")
    print(f"per round (Dagster - bare, sorted): {', '.join(f'{x:+.2f}' for x in extra)} s; median "
          f"{common.median(extra):+.2f} s, {common.median(extra) / bare:+.1%} of the bare call")


if __name__ == "__main__":
    main()
