"""int8-dyn's activation scaling (issue 15): perplexity and speed of each candidate against the
fp32 base, side by side in one process on SmolLM2-135M.

Candidates: torch's per-tensor dynamic int8 as is; SmoothQuant (Xiao et al. 2023) folded before
it, at a few migration strengths α; the same with down_proj kept in fp32 (mixed precision);
per-tensor with down_proj in fp32; per-token activation scales with per-row int8 weights through
``torch._int_mm`` (int32 accumulation, rescaled by the outer product of the scales), with and
without smoothing. Perplexity: the project's evaluator on the first ``--tokens`` WikiText-2 test
tokens. Speed: forward passes over ``--speed-tokens`` tokens, each candidate timed right after
the fp32 base in alternating order (ABBA), the median of the per-pair ratios reported with its
range, so load from other processes hits both arms of a pair alike.

    .venv/bin/python benchmarks/int8_activation_scaling.py [--tokens 4096] [--max-length 1024]
        [--candidates per-tensor,smoothquant-0.5,...] [--pairs 6] [--speed-tokens 1024]
"""

import argparse
import copy
import time
from collections.abc import Callable

import torch
from torch import nn

import speed_common as common
from llmopt_assets.measure.corpus import WIKITEXT2_VALID, calibration_windows, file_text, tokenize_stream
from llmopt_assets.measure.perplexity import PerplexityProtocol, evaluate_perplexity
from llmopt_assets.profiles import PROFILES
from llmopt_assets.techniques import quantization, smoothing
from llmopt_assets.techniques.variants import CALIBRATION_SEED


class PerTokenInt8Linear(nn.Module):
    """Candidate (b): int8 weights with one symmetric scale per output row, activations quantized
    symmetrically with one scale per token at run time, ``torch._int_mm`` (int8 x int8 -> int32),
    then y = acc · s_token ⊗ s_row + bias."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        self.register_buffer("weight_t", torch.round(weight / scale[:, None]).to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", scale)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        token_scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
        codes = torch.round(rows / token_scale).to(torch.int8)
        if codes.shape[0] <= 16:  # _int_mm wants more than 16 rows
            codes = torch.cat([codes, codes.new_zeros(17 - codes.shape[0], codes.shape[1])])
        accumulated = torch._int_mm(codes, self.weight_t)[: rows.shape[0]]
        out = accumulated.float().mul_(token_scale).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], -1)


def per_token(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> None:
    for name in quantization.quantizable_linear_names(model, skip):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, PerTokenInt8Linear(getattr(parent, child)))


def build(candidate: str, base: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """candidate: <scales>[-sq<α>][-mixed][-8bit]. scales: per-tensor (torch's layer as is),
    per-token (quantization.TokenScaledDynamicLinear: per-token scales on torch's kernel), intmm
    (PerTokenInt8Linear above); -sq<α>: SmoothQuant folded first; -mixed: down_proj kept in fp32;
    -8bit: torch's layer called with the full 8-bit activation range (reduce_range=False)."""
    model = copy.deepcopy(base)
    if candidate == "fp32":
        return model
    scales, *options = candidate.replace("per-", "per_").split("-")
    scales = scales.replace("per_", "per-")
    for option in options:
        if option.startswith("sq"):
            smoothing.smooth(model, calibration, float(option[2:]))
    skip = ("lm_head", "down_proj") if "mixed" in options else ("lm_head",)
    if scales == "intmm":
        per_token(model, skip)
    else:
        quantization.quantize(model, "int8-dyn", skip_modules=skip, activation_scaling=scales)
    if "8bit" in options:
        for module in model.modules():
            if isinstance(module, quantization.quantized_dynamic.Linear):
                packed = module._packed_params._packed_params
                module.forward = lambda x, packed=packed: torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False)
    return model.eval()


def forward_seconds(model: nn.Module, ids: torch.Tensor) -> Callable[[], float]:
    def run() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            model.model(input_ids=ids, use_cache=False)
        return time.perf_counter() - started
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--candidates", default=(
        "per-tensor,per-tensor-sq0.5,per-tensor-sq0.5-mixed,per-token,per-token-sq0.5,per-token-sq0.5-mixed,"
        "intmm,intmm-sq0.5"))
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--speed-tokens", type=int, default=1024)
    args = parser.parse_args()
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
    print("| candidate | perplexity | change vs fp32 | time ratio vs fp32, median of pairs (range) |")
    print("|---|---|---|---|")
    base_run = forward_seconds(base, speed_ids)
    for candidate in args.candidates.split(","):
        model = build(candidate, base, calibration)
        perplexity = evaluate_perplexity(model, ids, protocol).perplexity
        if args.pairs == 0:
            print(f"| {candidate} | {perplexity:.4f} | {perplexity / reference - 1:+.2%} | not timed |", flush=True)
            continue
        run = forward_seconds(model, speed_ids)
        run(), base_run()  # warm-up: kernel selection, packed weights
        ratios = []
        for pair in range(args.pairs):
            if pair % 2 == 0:
                b, v = base_run(), run()
            else:
                v, b = run(), base_run()
            ratios.append(v / b)
        print(f"| {candidate} | {perplexity:.4f} | {perplexity / reference - 1:+.2%} | "
              f"{common.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |", flush=True)
        del model


if __name__ == "__main__":
    main()
