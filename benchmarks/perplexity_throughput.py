"""Our perplexity evaluator against the HF-guide reference loop, same windows, one run.

Targets (issue 2): fp32 tokens/s ratio >= 1.0 with equal perplexity; bf16 >= 2.5x the fp32
reference with perplexity within 1%; peak RSS of a perplexity run <= 2 GB (measured in a fresh
child process per mode, so one mode's allocations do not hide another's).

    .venv/bin/python benchmarks/perplexity_throughput.py [--windows 4] [--max-length 2048] [--full]
"""

import argparse
import copy
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmopt_assets.measure.corpus import WIKITEXT2_RAW_TEST, corpus_text, tokenize_stream  # noqa: E402
from llmopt_assets.measure.hardware import peak_rss_mb  # noqa: E402
from llmopt_assets.measure.perplexity import PerplexityProtocol, evaluate_perplexity  # noqa: E402
from llmopt_assets.measure.reference import reference_perplexity  # noqa: E402
from llmopt_assets.models.registry import load_registry  # noqa: E402
from llmopt_assets.models.sources import load_source  # noqa: E402


def load(tokens: int):
    model, tokenizer = load_source(load_registry()["smollm2-135m"])
    ids = tokenize_stream(tokenizer, corpus_text(WIKITEXT2_RAW_TEST))
    return model, tokenizer, (ids[:tokens] if tokens else ids)


def evaluate(mode: str, model, ids: torch.Tensor, max_length: int) -> tuple[float, int, float]:
    """(perplexity, scored tokens, seconds) of one mode over the same windows."""
    started = time.perf_counter()
    if mode == "reference-fp32":
        perplexity, scored = reference_perplexity(model, ids, max_length, max_length)
    else:
        dtype = "bfloat16" if mode == "ours-bf16" else "float32"
        protocol = PerplexityProtocol("wikitext-2-raw-v1/test", "\n\n", max_length, max_length, dtype)
        result = evaluate_perplexity(model, ids, protocol)
        perplexity, scored = result.perplexity, result.scored_tokens
    return perplexity, scored, time.perf_counter() - started


def peak_rss(mode: str, tokens: int, max_length: int, weights: str) -> dict:
    """Run one mode alone in this (fresh) process, the model loaded from safetensors as the
    pipeline does (not de-quantized from the GGUF, whose conversion peaks higher), and report
    the process's peak resident memory."""
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(weights)
    ids = tokenize_stream(tokenizer, corpus_text(WIKITEXT2_RAW_TEST))
    ids = ids[:tokens] if tokens else ids
    if mode == "ours-bf16":
        model = model.to(torch.bfloat16)
    perplexity, scored, seconds = evaluate(mode, model, ids, max_length)
    return {"mode": mode, "perplexity": perplexity, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per mode")
    parser.add_argument("--full", action="store_true", help="the whole test split")
    parser.add_argument("--modes", default="reference-fp32,ours-fp32,ours-bf16")
    parser.add_argument("--rss-mode", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--no-rss", dest="rss", action="store_false", help="skip the peak-RSS runs")
    args = parser.parse_args()
    tokens = 0 if args.full else args.windows * args.max_length
    if args.rss_mode:
        print(json.dumps(peak_rss(args.rss_mode, tokens, args.max_length, args.weights)))
        return
    modes = args.modes.split(",")
    model, tokenizer, ids = load(tokens)
    bf16_model = copy.deepcopy(model).to(torch.bfloat16) if "ours-bf16" in modes else None
    timings: dict[str, list[float]] = {m: [] for m in modes}
    results: dict[str, tuple[float, int]] = {}
    # Interleaved rounds: machine noise (a few % here) hits every mode alike.
    for _ in range(args.rounds):
        for mode in modes:
            perplexity, scored, seconds = evaluate(mode, bf16_model if mode == "ours-bf16" else model, ids, args.max_length)
            timings[mode].append(scored / seconds)
            results[mode] = (perplexity, scored)
    rss = {mode: math.nan for mode in modes}
    weights = tempfile.mkdtemp()
    model.save_pretrained(weights)
    tokenizer.save_pretrained(weights)
    for mode in modes if args.rss else []:
        out = subprocess.run(
            [sys.executable, __file__, "--rss-mode", mode, "--weights", weights, "--max-length", str(args.max_length),
             *(["--full"] if args.full else ["--windows", str(args.windows)])],
            capture_output=True, text=True, check=True,
        )
        rss[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    shutil.rmtree(weights)
    speed = {m: statistics.median(v) for m, v in timings.items()}
    scored = next(iter(results.values()))[1]
    print(f"SmolLM2-135M, WikiText-2 raw test, windows of {args.max_length}, {scored} scored tokens, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    for mode in modes:
        print(f"  {mode:15s} perplexity {results[mode][0]:.4f}  {speed[mode]:7.1f} tok/s "
              f"(rounds: {', '.join(f'{v:.0f}' for v in timings[mode])})  peak RSS {rss[mode]:.0f} MB")
    if {"reference-fp32", "ours-fp32", "ours-bf16"} <= set(modes):
        ref, fp32, bf16 = (results[m][0] for m in ("reference-fp32", "ours-fp32", "ours-bf16"))
        print(f"fp32 throughput ratio (ours / reference): {speed['ours-fp32'] / speed['reference-fp32']:.2f}  (target >= 1.0)")
        print(f"bf16 throughput ratio (ours bf16 / reference fp32): {speed['ours-bf16'] / speed['reference-fp32']:.2f}  (target >= 2.5)")
        print(f"fp32 perplexity relative difference: {abs(fp32 / ref - 1):.2e}  (equal)")
        print(f"bf16 perplexity change: {100 * (bf16 / fp32 - 1):+.3f}%  (target within 1%)")
        print(f"peak RSS of a perplexity run: ours fp32 {rss['ours-fp32']:.0f} MB, ours bf16 {rss['ours-bf16']:.0f} MB  (target <= 2048)")


if __name__ == "__main__":
    main()
