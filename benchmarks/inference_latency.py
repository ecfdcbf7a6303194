"""Benchmark 3 (issue 15): what a user of a compressed model feels. Per-token latency of greedy
generation with the KV cache at batch 1, and generated tokens/s at batch 8, per variant against
the fp32 base, measured side by side in one process.

Decode latency is (t(prompt + N new tokens) − t(prompt + 1 new token)) / (N − 1): the prefill
and the first token are taken out. Prompts are WikiText-2 slices of equal length (no padding).
Rounds are interleaved over the variants; the median round is reported with the ratio to the
base of the same round set. Head-pruned variants (ah90, int8-dyn+ah90) are pruned here first
with the smoke profile's calibration (minutes on 2 cores), only when asked for.

    .venv/bin/python benchmarks/inference_latency.py [--variants base,int8-dyn,int8-dyn-tensor,bf16,int8,nf4,fp4]
        [--prompt 128] [--new-tokens 32] [--rounds 3]
"""

import argparse
import copy
import time

import torch

import speed_common as common
from llmopt_assets.measure.corpus import WIKITEXT2_VALID, file_text, tokenize_stream
from llmopt_assets.profiles import PROFILES
from llmopt_assets.techniques import variants
from llmopt_assets.techniques.recipe import parse


def build(key: str, base, calibration: torch.Tensor):
    """The variant `key` built in memory from the base: pruning steps, then the precision."""
    recipe = parse(key)
    model = copy.deepcopy(base)
    if recipe.step("prune-heads") or recipe.step("prune-weights"):
        variants.prune(model, recipe, calibration, PROFILES["smoke"], log=lambda message: None)
    step = recipe.step("quantize")
    if step is not None:  # int8-dyn's SmoothQuant factors from the smoke profile's windows
        variants.quantize_step(model, step, calibration, PROFILES["smoke"])
    if recipe.step("distill"):
        raise ValueError(f"{key}: distilled variants need their trained student; not built here")
    return model.eval()


@torch.inference_mode()
def generate_seconds(model, prompts: torch.Tensor, new_tokens: int) -> float:
    started = time.perf_counter()
    model.generate(
        prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
        min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0,
    )
    return time.perf_counter() - started


def measure(model, prompt_1: torch.Tensor, prompt_8: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(decode ms per token at batch 1, generated tokens/s at batch 8)."""
    one = generate_seconds(model, prompt_1, 1)
    full = generate_seconds(model, prompt_1, new_tokens)
    latency_ms = 1000 * (full - one) / (new_tokens - 1)
    batch_seconds = generate_seconds(model, prompt_8, new_tokens)
    return latency_ms, prompt_8.shape[0] * new_tokens / batch_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="base,int8-dyn,int8-dyn-tensor,bf16,int8,nf4,fp4")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (the first token is taken out)")
    common.header("Inference latency (batch 1, KV cache) and throughput (batch 8) per variant")
    base, tokenizer = common.load_model()
    calibration = tokenize_stream(tokenizer, file_text(WIKITEXT2_VALID))
    ids = common.wikitext_ids(tokenizer, 9 * args.prompt)
    prompt_1 = ids[: args.prompt].unsqueeze(0)
    prompt_8 = ids[args.prompt : 9 * args.prompt].reshape(8, args.prompt)
    keys = [parse(k).key for k in args.variants.split(",")]
    models = {key: base if key == "base" else build(key, base, calibration) for key in keys}
    for model in models.values():
        generate_seconds(model, prompt_1, 2)  # warm-up: kernel selection, packed weights

    results: dict[str, list[tuple[float, float]]] = {key: [] for key in keys}
    for round_index in range(args.rounds):
        for key in keys if round_index % 2 == 0 else reversed(keys):
            results[key].append(measure(models[key], prompt_1, prompt_8, args.new_tokens))
    print(f"prompt {args.prompt} tokens, {args.new_tokens} new tokens, greedy, {args.rounds} "
          f"interleaved round(s), median\n")
    print("| variant | ms / token, batch 1 (rounds) | vs base | tokens/s, batch 8 (rounds) | vs base |")
    print("|---|---|---|---|---|")
    latency = {k: common.median([r[0] for r in results[k]]) for k in keys}
    throughput = {k: common.median([r[1] for r in results[k]]) for k in keys}
    reference = "base" if "base" in keys else keys[0]
    for key in keys:
        rounds_1 = ", ".join(f"{r[0]:.1f}" for r in results[key])
        rounds_8 = ", ".join(f"{r[1]:.0f}" for r in results[key])
        print(f"| {key} | {latency[key]:.1f} ({rounds_1}) | {latency[key] / latency[reference]:.2f}x | "
              f"{throughput[key]:.0f} ({rounds_8}) | {throughput[key] / throughput[reference]:.2f}x |")


if __name__ == "__main__":
    main()
