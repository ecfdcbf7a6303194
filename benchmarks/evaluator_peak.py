"""Benchmark 1 (issue 15): our perplexity evaluator against the HF-guide loop and lm-eval's
rolling-loglikelihood perplexity, on the same tokens, fp32 and bf16, with the matrix-multiply
peak measured in the same run.

Every mode scores the same WikiText-2 windows of SmolLM2-135M; rounds are interleaved so slow
moments of a shared machine hit every mode alike; the median round is reported. Useful work is
2·params·tokens/s (llmopt_assets.measure.peak), compared with the best torch.matmul rate of the
same dtype on the same threads, measured before and after the modes.

    .venv/bin/python benchmarks/evaluator_peak.py [--windows 2] [--max-length 2048] [--rounds 3]
        [--compile] [--no-lm-eval]
"""

import argparse
import copy
import math
import time

import torch

import speed_common as common
from llmopt_assets.measure.peak import matmul_peak, model_gflops
from llmopt_assets.measure.perplexity import PerplexityProtocol, evaluate_perplexity
from llmopt_assets.measure.reference import reference_perplexity


def lm_eval_perplexity(model, tokenizer, ids: torch.Tensor, max_length: int) -> tuple[float, int]:
    """lm-eval's word-independent token perplexity: loglikelihood_rolling over the decoded text
    (it re-tokenizes, and scores the first token too, from its end-of-text prefix)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=max_length, batch_size=1, device="cpu")
    text = tokenizer.decode(ids)
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    loglikelihood = lm.loglikelihood_rolling([request], disable_tqdm=True)[0]
    scored = len(lm.tok_encode(text))
    return math.exp(-loglikelihood / scored), scored


def run_mode(mode: str, models: dict, tokenizer, ids: torch.Tensor, max_length: int) -> tuple[float, int, float]:
    """(perplexity, scored tokens, seconds) of one mode."""
    dtype = "bfloat16" if mode.endswith("bf16") else "float32"
    model = models[dtype]
    protocol = PerplexityProtocol("wikitext-2-raw-v1/test", "\n\n", max_length, max_length, dtype)
    started = time.perf_counter()
    if mode.startswith("hf-guide"):
        perplexity, scored = reference_perplexity(model, ids, max_length, max_length)
    elif mode.startswith("lm-eval"):
        perplexity, scored = lm_eval_perplexity(model, tokenizer, ids, max_length)
    else:
        options = {
            "ours-unbatched": {"batch_tokens": max_length},
            "ours-compiled": {"compile": True},
        }.get(mode.rsplit("-", 1)[0], {})
        result = evaluate_perplexity(model, ids, protocol, **options)
        perplexity, scored = result.perplexity, result.scored_tokens
    return perplexity, scored, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add torch.compile'd modes")
    parser.add_argument("--no-lm-eval", action="store_true")
    args = parser.parse_args()
    common.header("Evaluator tokens/s vs the HF-guide loop and lm-eval, % of matmul peak")

    fp32, tokenizer = common.load_model(torch.float32)
    models = {"float32": fp32, "bfloat16": copy.deepcopy(fp32).to(torch.bfloat16)}
    parameters = sum(p.numel() for p in fp32.parameters())
    ids = common.wikitext_ids(tokenizer, args.windows * args.max_length)
    try:
        import lm_eval  # noqa: F401
        have_lm_eval = not args.no_lm_eval
    except ImportError:
        have_lm_eval = False
        print("lm-eval is not installed: its rolling-loglikelihood modes are left out\n")

    modes = ["hf-guide-fp32", "ours-unbatched-fp32", "ours-fp32", "hf-guide-bf16", "ours-bf16"]
    if have_lm_eval:
        modes += ["lm-eval-fp32", "lm-eval-bf16"]
    if args.compile:
        modes += ["ours-compiled-fp32", "ours-compiled-bf16"]
        for mode in ("ours-compiled-fp32", "ours-compiled-bf16"):  # compile outside the timing
            started = time.perf_counter()
            run_mode(mode, models, tokenizer, ids[: args.max_length], args.max_length)
            print(f"{mode}: first call (compiling) {time.perf_counter() - started:.0f} s")

    peaks = {d: [matmul_peak(getattr(torch, d))] for d in ("float32", "bfloat16")}
    rounds: dict[str, list[tuple[float, int, float]]] = {m: [] for m in modes}
    for round_index in range(args.rounds):
        for mode in modes if round_index % 2 == 0 else reversed(modes):
            rounds[mode].append(run_mode(mode, models, tokenizer, ids, args.max_length))
    for d in peaks:
        peaks[d].append(matmul_peak(getattr(torch, d)))
    peak = {d: max(p.gflops for p in runs) for d, runs in peaks.items()}

    print(f"SmolLM2-135M, {parameters / 1e6:.1f} M parameters, {args.windows} window(s) of "
          f"{args.max_length} tokens, {args.rounds} interleaved round(s), median round")
    print(f"matmul peak (best of 10 2048x2048 products, before and after): fp32 {peak['float32']:.0f} "
          f"GFLOP/s, bf16 {peak['bfloat16']:.0f} GFLOP/s on {torch.get_num_threads()} threads\n")
    print("| mode | perplexity | scored tokens | tokens/s (rounds) | vs HF-guide, same dtype | GFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|---|")
    speed = {m: common.median([s / t for _, s, t in rounds[m]]) for m in modes}
    for mode in modes:
        dtype_tag = mode.rsplit("-", 1)[1]
        dtype = "bfloat16" if dtype_tag == "bf16" else "float32"
        perplexity, scored, _ = rounds[mode][0]
        gflops = model_gflops(parameters, speed[mode])
        listed = ", ".join(f"{s / t:.0f}" for _, s, t in rounds[mode])
        print(f"| {mode} | {perplexity:.4f} | {scored} | {speed[mode]:.0f} ({listed}) | "
              f"{speed[mode] / speed['hf-guide-' + dtype_tag]:.2f}x | {gflops:.0f} | "
              f"{100 * gflops / peak[dtype]:.0f}% |")
    ours, reference = rounds["ours-fp32"][0][0], rounds["hf-guide-fp32"][0][0]
    print(f"\nfp32 perplexity, ours vs HF-guide: {abs(ours - reference) / reference:.1e} relative")
    print(f"bf16 vs fp32 (ours): {rounds['ours-bf16'][0][0] / ours - 1:+.3%} perplexity, "
          f"{speed['ours-bf16'] / speed['ours-fp32']:.2f}x tokens/s")


if __name__ == "__main__":
    main()
