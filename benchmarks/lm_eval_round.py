"""The benchmark round on SmolLM2-135M: base, nf4 and ah90 on the paper's five lm-eval tasks.

Per variant and benchmark: score ± stderr, items, chance level, wall seconds and the tokens/s of
lm-eval's loglikelihood requests; beside them the perplexity evaluator's tokens/s on the same
model (a few WikiText-2 windows), and per variant the combined quality ratio (perplexity and
every benchmark, §3.4.1). Variants come from the model store when materialized there, else are
built in memory (nf4 quantized at load, ah90 pruned on the profile's calibration windows).

    .venv/bin/python benchmarks/lm_eval_round.py [--limit 2] [--variants base,nf4,ah90]
        [--benchmarks arc_challenge,hellaswag] [--batch-size 4] [--lm-eval-model hflm] [--json out.json]

Without --limit, the smoke profile's per-benchmark limits.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmopt_assets.measure.benchmarks import LM_EVAL_MODELS, PREFIX_CACHE_HFLM, run_benchmarks  # noqa: E402
from llmopt_assets.measure.corpus import (  # noqa: E402
    WIKITEXT2_RAW_TEST,
    WIKITEXT2_VALID,
    corpus_text,
    file_text,
    tokenize_stream,
)
from llmopt_assets.measure.perplexity import PerplexityProtocol, evaluate_perplexity  # noqa: E402
from llmopt_assets.models.registry import load_registry  # noqa: E402
from llmopt_assets.models.sources import load_source  # noqa: E402
from llmopt_assets.models.store import ModelStore  # noqa: E402
from llmopt_assets.paths import STORE_DIR  # noqa: E402
from llmopt_assets.profiles import PAPER_BENCHMARKS, get_profile  # noqa: E402
from llmopt_assets.scoring.opt import QualityScore  # noqa: E402
from llmopt_assets.scoring.quality import BenchmarkPair, combined_quality  # noqa: E402
from llmopt_assets.techniques import quantization  # noqa: E402
from llmopt_assets.techniques.loading import load_variant  # noqa: E402
from llmopt_assets.techniques.recipe import parse  # noqa: E402
from llmopt_assets.techniques.variants import prune  # noqa: E402

MODEL = "smollm2-135m"
PERPLEXITY_WINDOWS, PERPLEXITY_LENGTH = 2, 512


def variant(technique: str, store: ModelStore, log) -> tuple[torch.nn.Module, object, str]:
    """(model, tokenizer, where it came from)."""
    if store.exists(MODEL, technique):
        model, tokenizer = load_variant(store, store.manifest(MODEL, technique))
        return model, tokenizer, f"store {store.root}"
    model, tokenizer = load_source(load_registry()[MODEL])
    recipe = parse(technique)
    if recipe.step("distill") or recipe.step("prune-weights"):
        raise SystemExit(f"{technique}: build it with the pipeline first (llmopt demo), then rerun")
    if recipe.step("prune-heads"):
        stream = tokenize_stream(tokenizer, file_text(WIKITEXT2_VALID))
        prune(model, recipe, stream, get_profile("smoke"), log=log)
    quantize = recipe.step("quantize")
    if quantize:
        quantization.quantize(model, quantize["scheme"])
    return model.eval(), tokenizer, "built in memory"


def perplexity_throughput(model, tokenizer) -> tuple[float, float]:
    """(perplexity, scored tokens/s) of our evaluator on the first WikiText-2 test windows."""
    ids = tokenize_stream(tokenizer, corpus_text(WIKITEXT2_RAW_TEST))[: PERPLEXITY_WINDOWS * PERPLEXITY_LENGTH]
    protocol = PerplexityProtocol("wikitext-2-raw-v1/test", "\n\n", PERPLEXITY_LENGTH, PERPLEXITY_LENGTH, "float32")
    started = time.perf_counter()
    result = evaluate_perplexity(model, ids, protocol)
    return result.perplexity, result.scored_tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="items per benchmark (per MMLU subject); default: smoke profile")
    parser.add_argument("--variants", default="base,nf4,ah90")
    parser.add_argument("--benchmarks", default=",".join(PAPER_BENCHMARKS))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lm-eval-model", choices=LM_EVAL_MODELS, default=PREFIX_CACHE_HFLM,
                        help="hflm-prefix-cache: shared contexts once (default); hflm: lm-eval's plain HFLM")
    parser.add_argument("--store", default=str(STORE_DIR))
    parser.add_argument("--json", help="write every score here")
    args = parser.parse_args()
    names = args.benchmarks.split(",")
    limits = {n: args.limit for n in names} if args.limit else get_profile("smoke").benchmark_limits
    store = ModelStore(Path(args.store))
    print(f"torch threads {torch.get_num_threads()}; limits {limits}; batch size {args.batch_size}; "
          f"lm-eval model {args.lm_eval_model}")
    results: dict[str, dict] = {}
    for technique in args.variants.split(","):
        model, tokenizer, origin = variant(technique, store, log=lambda m: print(f"  {m}"))
        perplexity, ppl_tokens_per_second = perplexity_throughput(model, tokenizer)
        print(f"\n{MODEL} {technique} ({origin}): perplexity {perplexity:.3f} on "
              f"{PERPLEXITY_WINDOWS}×{PERPLEXITY_LENGTH} tokens, evaluator {ppl_tokens_per_second:.0f} tokens/s")
        started = time.perf_counter()
        scores, failures = run_benchmarks(
            model, tokenizer, names, limits, batch_size=args.batch_size, lm_eval_model=args.lm_eval_model,
            on_score=lambda s: print(
                f"  {s.benchmark:15s} {s.metric:8s} {s.value:.4f} ± "
                + (f"{s.stderr:.4f}" if s.stderr is not None else "n/a   ")
                + f"  items {s.items:4d}  chance {s.chance:.3f}  {s.seconds:6.1f} s  "
                f"loglikelihood {s.tokens_per_second or 0:.0f} tokens/s ({s.loglikelihood_tokens} tokens, "
                f"{s.forward_tokens} through the model)"
            ),
        )
        round_seconds = time.perf_counter() - started
        for name, reason in failures.items():
            print(f"  {name}: FAILED {reason}")
        ll_tokens = sum(s.loglikelihood_tokens for s in scores)
        ll_seconds = sum(s.loglikelihood_seconds for s in scores)
        print(f"  round {round_seconds:.1f} s; loglikelihood {ll_tokens / ll_seconds:.0f} tokens/s overall "
              f"vs the perplexity evaluator's {ppl_tokens_per_second:.0f}")
        results[technique] = {
            "origin": origin, "perplexity": perplexity, "perplexity_tokens_per_second": ppl_tokens_per_second,
            "round_seconds": round_seconds, "scores": [s.to_dict() for s in scores], "failures": failures,
        }
        del model
    if "base" in results:
        base = results["base"]
        base_scores = {s["benchmark"]: s for s in base["scores"]}
        for technique, result in results.items():
            if technique == "base":
                continue
            pairs = [
                BenchmarkPair(
                    QualityScore(base_scores[s["benchmark"]]["value"], s["value"], True, s["chance"], s["benchmark"]),
                    items=base_scores[s["benchmark"]]["items"], discrete=base_scores[s["benchmark"]]["discrete"],
                    base_stderr=base_scores[s["benchmark"]]["stderr"],
                )
                for s in result["scores"] if s["benchmark"] in base_scores
            ]
            quality = combined_quality(result["perplexity"] / base["perplexity"], pairs)
            result["quality"] = quality
            print(f"\n{technique}: Pc (perplexity) {result['perplexity'] / base['perplexity']:.4f}; "
                  f"penalty perplexity-only {quality['quality_penalty_perplexity']:.4f}, combined "
                  + (f"{quality['quality_penalty_combined']:.4f}" if quality["quality_penalty_combined"] else "n/a")
                  + f" ({quality['quality_basis']})"
                  + "".join(f"\n  {flag}" for flag in quality["quality_flags"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
