"""Benchmark 2 (issue 15): time and peak memory to produce each variant of SmolLM2-135M.

Each step runs alone in a fresh child process (so one step's allocations never hide another's)
on the fp32 base loaded from safetensors, through the same core functions the pipeline calls:
quantization (bitsandbytes int8 / NF4 / FP4, torch int8-dyn, bf16), head pruning (attention
concentration over the profile's calibration windows), SparseGPT 2:4 (the profile's calibration)
and N distillation steps (the smoke preset, shortened). Reported per step: wall seconds of the
step alone, resident memory after loading the base, and the process's peak (VmHWM).

    .venv/bin/python benchmarks/variant_cost.py [--profile smoke] [--distil-steps 4] [--steps int8,ah90,...]
"""

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import speed_common as common
from llmopt_assets.measure.corpus import WIKITEXT2_VALID, file_text, tokenize_stream
from llmopt_assets.measure.hardware import peak_rss_mb

STEPS = ["int8", "nf4", "fp4", "int8-dyn", "int8-dyn-tensor", "bf16", "ah90", "sparsegpt-2:4", "distil"]


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_step(step: str, profile_name: str, distil_steps: int) -> dict:
    """One step on a freshly loaded base, in this process."""
    from llmopt_assets.profiles import PROFILES
    from llmopt_assets.techniques import distillation, variants
    from llmopt_assets.techniques.recipe import QUANTIZE, parse

    profile = PROFILES[profile_name]
    model, tokenizer = common.load_model()
    calibration = tokenize_stream(tokenizer, file_text(WIKITEXT2_VALID))
    loaded = resident_mb()
    started = time.perf_counter()
    if step in QUANTIZE:  # int8-dyn: SmoothQuant calibration and folding counted in its time
        variants.quantize_step(model, parse(step).step("quantize"), calibration, profile)
    elif step == "distil":
        preset = dataclasses.replace(distillation.DistillationConfig.SMOKE, steps=distil_steps, log_every=10**9)
        student = distillation.init_student(model, distillation.default_kept_layers(len(model.model.layers)))
        blocks = distillation.pack_blocks(calibration, preset.block_length)
        distillation.distill(model, student, blocks, preset, log=lambda progress: None)
    else:
        variants.prune(model, parse(step), calibration, profile, log=lambda message: None)
    seconds = time.perf_counter() - started
    return {"step": step, "seconds": seconds, "rss_after_load_mb": loaded, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--distil-steps", type=int, default=4)
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_step(args.child, args.profile, args.distil_steps)))
        return
    common.header("Time and peak memory to produce each variant")
    common.weights_dir()  # written once, before any child times anything
    print(f"profile {args.profile}; distillation: {args.distil_steps} smoke-preset steps\n")
    print("| step | seconds | RSS after loading the base | peak RSS | peak - loaded |")
    print("|---|---|---|---|---|")
    for step in args.steps.split(","):
        done = subprocess.run(
            [sys.executable, __file__, "--child", step, "--profile", args.profile,
             "--distil-steps", str(args.distil_steps)],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            print(f"| {step} | failed: {done.stderr.strip().splitlines()[-1]} | | | |")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {step} | {row['seconds']:.1f} | {row['rss_after_load_mb']:.0f} MB | "
              f"{row['peak_rss_mb']:.0f} MB | {row['peak_rss_mb'] - row['rss_after_load_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
