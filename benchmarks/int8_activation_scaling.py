"""int8-dyn's activation scaling (issue 15): perplexity and speed of each candidate against the
fp32 base, side by side in one process on SmolLM2-135M.

Candidates: torch's per-tensor dynamic int8 as is; SmoothQuant (Xiao et al. 2023) folded before
it, at a few migration strengths α; the same with down_proj kept in fp32 (mixed precision);
per-tensor with down_proj in fp32; per-token activation scales with per-row int8 weights through
``torch._int_mm`` (int32 accumulation, rescaled by the outer product of the scales), with and
without smoothing, eager or with its elementwise passes fused by torch.compile (``fused``: the
``int8-dyn`` default since issue 15's profile), with or without lm_head quantized. The first
window's time (torch.compile's included for ``fused``) is printed beside. Perplexity: the project's evaluator on the first ``--tokens`` WikiText-2 test
tokens. Speed: one evaluator window of ``--speed-tokens`` tokens (backbone, lm_head, loss: what Tc
times; before 2026-11-30 02:40 the backbone alone), each candidate timed right after
the fp32 base in alternating order (ABBA), the median of the per-pair ratios reported with its
range, so load from other processes hits both arms of a pair alike.

    .venv/bin/python benchmarks/int8_activation_scaling.py [--tokens 4096] [--max-length 1024]
        [--candidates per-tensor,per-token-sq0.5,fused-sq0.5-mixed,...] [--pairs 6] [--speed-tokens 1024]
        [--threads N]
"""

import argparse
import copy
import time
from collections.abc import Callable

import torch
from torch import nn

import speed_common as common
from llmopt_assets.measure.corpus import WIKITEXT2_VALID, calibration_windows, file_text, tokenize_stream
from llmopt_assets.measure.perplexity import PerplexityProtocol, batch_nll, evaluate_perplexity
from llmopt_assets.profiles import PROFILES
from llmopt_assets.techniques import quantization, smoothing
from llmopt_assets.techniques.variants import CALIBRATION_SEED


def build(candidate: str, base: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """candidate: <scales>[-sq<α>][-mixed][-8bit][-head]. scales: per-tensor (torch's layer as is),
    per-token (quantization.TokenScaledDynamicLinear: per-token scales on torch's kernel), intmm
    (quantization.PerTokenInt8Linear: per-token int8 through torch._int_mm, elementwise passes in
    eager torch), fused (the same with its passes fused by torch.compile: the int8-dyn default);
    -sq<α>: SmoothQuant folded first; -mixed: down_proj kept in fp32; -8bit: torch's layer called
    with the full 8-bit activation range (reduce_range=False); -head: lm_head quantized too."""
    model = copy.deepcopy(base)
    if candidate == "fp32":
        return model
    scales, *options = candidate.replace("per-", "per_").split("-")
    scales = scales.replace("per_", "per-")
    for option in options:
        if option.startswith("sq"):
            smoothing.smooth(model, calibration, float(option[2:]))
    int_mm = scales in ("intmm", "fused")
    quantization.quantize(
        model, "int8-dyn",
        activation_scaling=quantization.PER_TOKEN if int_mm else scales,
        int8_kernel=quantization.INT_MM if int_mm else quantization.FBGEMM,
        fp32_modules=("down_proj",) if "mixed" in options else (),
        quantize_lm_head="head" in options,
    )
    for module in model.modules():
        if isinstance(module, quantization.PerTokenInt8Linear) and scales == "intmm":
            module.fusion = quantization.EAGER
    if "8bit" in options:
        for module in model.modules():
            if isinstance(module, quantization.quantized_dynamic.Linear):
                packed = module._packed_params._packed_params
                module.forward = lambda x, packed=packed: torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False)
    return model.eval()


def window_seconds(model: nn.Module, ids: torch.Tensor) -> Callable[[], float]:
    """One evaluator window as Tc times it: backbone, lm_head in chunks and the loss (batch_nll)."""
    def run() -> float:
        started = time.perf_counter()
        batch_nll(model.base_model, model.get_output_embeddings(), ids, [ids.shape[1] - 1])
        return time.perf_counter() - started
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--candidates", default=(
        "per-tensor,per-tensor-sq0.5,per-tensor-sq0.5-mixed,per-token,per-token-sq0.5,per-token-sq0.5-mixed,"
        "intmm-sq0.5,fused-sq0.5,fused-sq0.5-mixed,fused-sq0.5-mixed-head"))
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--speed-tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    common.header("int8-dyn activation scaling: perplexity and paired speed vs fp32")
    base, tokenizer = common.load_model()
    profile = PROFILES["smoke"]
    stream = tokenize_stream(tokenizer, file_text(WIKITEXT2_VALID))
    calibration = calibration_windows(stream, profile.smoothing_samples, profile.smoothing_length, seed=CALIBRATION_SEED)
    ids = common.wikitext_ids(tokenizer, None)
    protocol = PerplexityProtocol("wikitext2", "\n\n", args.max_length, args.max_length, "float32", args.tokens)
    speed_ids = ids[: args.speed_tokens].reshape(1, -1)
    print(f"calibration: {calibration.shape[0]} windows x {calibration.shape[1]} tokens of WikiText-2 valid "
          f"(seed {CALIBRATION_SEED}); perplexity on {args.tokens} test tokens, windows of {args.max_length}; "
          f"speed: forward over {args.speed_tokens} tokens, {args.pairs} ABBA pairs per candidate\n")
    reference = evaluate_perplexity(base, ids, protocol).perplexity
    print(f"fp32: perplexity {reference:.4f}\n")
    print("| candidate | perplexity | change vs fp32 | time ratio vs fp32, median of pairs (range) "
          "| first window, s (compile included) |")
    print("|---|---|---|---|---|")
    base_run = window_seconds(base, speed_ids)
    for candidate in args.candidates.split(","):
        model = build(candidate, base, calibration)
        run = window_seconds(model, speed_ids)
        first = run()  # warm-up: kernel selection, packed weights, torch.compile for the fused kernel
        perplexity = evaluate_perplexity(model, ids, protocol).perplexity
        if args.pairs == 0:
            print(f"| {candidate} | {perplexity:.4f} | {perplexity / reference - 1:+.2%} | not timed | {first:.1f} |",
                  flush=True)
            continue
        run(), base_run()
        ratios = []
        for pair in range(args.pairs):
            if pair % 2 == 0:
                b, v = base_run(), run()
            else:
                v, b = run(), base_run()
            ratios.append(v / b)
        print(f"| {candidate} | {perplexity:.4f} | {perplexity / reference - 1:+.2%} | "
              f"{common.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) | {first:.1f} |", flush=True)
        del model


if __name__ == "__main__":
    main()
