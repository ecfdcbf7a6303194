"""Our perplexity evaluator against the HF-guide reference loop, same windows, one run.

Targets (issue 2): fp32 tokens/s ratio >= 1.0 with equal perplexity; bf16 >= 2.5x the fp32
reference with perplexity within 1%; peak RSS of a perplexity run <= 2 GB (measured in a fresh
child process per mode, so one mode's allocations do not hide another's).

    .venv/bin/python benchmarks/perplexity_throughput.py [--windows 4] [--max-length 2048] [--full]
"""

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmopt_assets.measure.corpus import WIKITEXT2_RAW_TEST, corpus_text, tokenize_stream  # noqa: E402
from llmopt_assets.measure.perplexity import PerplexityProtocol, evaluate_perplexity  # noqa: E402
from llmopt_assets.models.registry import load_registry  # noqa: E402
from llmopt_assets.models.sources import load_source  # noqa: E402


def reference_loop(model, ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """The HF perplexity guide's loop: full logits and the model's own loss per window."""
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        trg_len = end - prev_end
        input_ids = ids[begin:end].unsqueeze(0)
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids, use_cache=False).loss
        scored = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * scored
        n_tokens += scored
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll_sum / n_tokens), n_tokens


def run_mode(mode: str, tokens: int, max_length: int) -> dict:
    model, tokenizer = load_source(load_registry()["smollm2-135m"])
    ids = tokenize_stream(tokenizer, corpus_text(WIKITEXT2_RAW_TEST))
    ids = ids[:tokens] if tokens else ids
    if mode == "ours-bf16":
        model = model.to(torch.bfloat16)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if mode == "reference-fp32":
        perplexity, scored = reference_loop(model, ids, max_length, max_length)
    else:
        dtype = "bfloat16" if mode == "ours-bf16" else "float32"
        result = evaluate_perplexity(model, ids, PerplexityProtocol("wikitext-2-raw-v1/test", "\n\n", max_length, max_length, dtype))
        perplexity, scored = result.perplexity, result.scored_tokens
    seconds = time.perf_counter() - started
    return {
        "mode": mode,
        "perplexity": perplexity,
        "scored_tokens": scored,
        "seconds": seconds,
        "tokens_per_second": scored / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mb": rss_before,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--full", action="store_true", help="the whole test split")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    tokens = 0 if args.full else args.windows * args.max_length
    if args.mode:
        print(json.dumps(run_mode(args.mode, tokens, args.max_length)))
        return
    results = {}
    for mode in ("reference-fp32", "ours-fp32", "ours-bf16"):
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--max-length", str(args.max_length),
             *(["--full"] if args.full else ["--windows", str(args.windows)])],
            capture_output=True, text=True, check=True,
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(results[mode]))
    ref, fp32, bf16 = results["reference-fp32"], results["ours-fp32"], results["ours-bf16"]
    print(f"\nSmolLM2-135M, WikiText-2 raw test, windows of {args.max_length}, {fp32['scored_tokens']} scored tokens")
    print(f"perplexity: reference {ref['perplexity']:.4f}, ours fp32 {fp32['perplexity']:.4f}, ours bf16 {bf16['perplexity']:.4f}")
    print(f"fp32 throughput ratio (ours / reference): {fp32['tokens_per_second'] / ref['tokens_per_second']:.2f}  (target >= 1.0)")
    print(f"bf16 throughput ratio (ours bf16 / reference fp32): {bf16['tokens_per_second'] / ref['tokens_per_second']:.2f}  (target >= 2.5)")
    print(f"bf16 perplexity change: {100 * (bf16['perplexity'] / fp32['perplexity'] - 1):+.3f}%  (target within 1%)")
    print(f"fp32 perplexity relative difference: {abs(fp32['perplexity'] / ref['perplexity'] - 1):.2e}")
    print(f"peak RSS MB: reference {ref['peak_rss_mb']:.0f}, ours fp32 {fp32['peak_rss_mb']:.0f}, ours bf16 {bf16['peak_rss_mb']:.0f}  (target <= 2048)")


if __name__ == "__main__":
    main()
