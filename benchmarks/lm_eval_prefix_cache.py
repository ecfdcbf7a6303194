"""Shared-context scoring vs lm-eval's plain HFLM on the same loglikelihood requests (issue 9).

The benchmark's few-shot requests are built and tokenized by lm-eval itself (the task's
instances, HFLM's own tokenization), then run through both lm-eval models over ONE in-memory
SmolLM2-135M, interleaved: the items are cut into rounds, and each round goes through plain HFLM
and the prefix-cached HFLM, the order alternating from round to round. Prints per model the
requested tokens/s (context + continuation tokens asked for, as benchmark_run reports them), the
tokens that actually went through the model, the speed-up in wall time and in this process's CPU
time (the latter less disturbed by other load on a shared machine), the largest |Δ loglik| and
how many is_greedy answers differ.

    .venv/bin/python benchmarks/lm_eval_prefix_cache.py [--benchmarks arc_challenge,hellaswag]
        [--limit 8] [--items-per-round 2] [--batch-size 4] [--dtype float32]
"""

import argparse
import time

import torch

import speed_common as common
from llmopt_assets.measure.benchmarks import (
    BENCHMARKS,
    FEWSHOT_SEED,
    PLAIN_HFLM,
    PREFIX_CACHE_HFLM,
    quiet_lm_eval,
    task_manager,
    wrap_model,
)
from llmopt_assets.paths import DATA_DIR


def leaf_tasks(task_dict: dict) -> list:
    """The Task objects of a (possibly grouped, as MMLU) lm-eval task dict."""
    tasks = []
    for value in task_dict.values():
        if isinstance(value, dict):
            tasks += leaf_tasks(value)
        elif hasattr(value, "build_all_requests"):
            tasks.append(value)
    return tasks


def token_requests(lm, name: str, limit: int) -> list[list[tuple]]:
    """The benchmark's loglikelihood requests as HFLM tokenizes them, one list per item."""
    benchmark = BENCHMARKS[name]
    items: dict[tuple[str, int], list] = {}
    loaded = task_manager("local", DATA_DIR).load([benchmark.task("local")])["tasks"]
    for task in leaf_tasks(loaded):
        if task.get_config("num_fewshot") != 0:  # as simple_evaluate: a 0-shot task stays 0-shot
            task.set_config(key="num_fewshot", value=benchmark.num_fewshot)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        for instance in task.instances:
            items.setdefault((task.config.task, instance.doc_id), []).append(instance)
    captured: list[tuple] = []
    real = lm._loglikelihood_tokens
    # lm-eval's own tokenization (HFLM.loglikelihood), stopped before any model call.
    lm._loglikelihood_tokens = lambda requests, disable_tqdm=False: captured.extend(requests) or [(0.0, False)] * len(requests)
    per_item = []
    for instances in items.values():
        start = len(captured)
        lm.loglikelihood(instances, disable_tqdm=True)
        per_item.append(captured[start:])
    lm._loglikelihood_tokens = real
    return per_item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", default="arc_challenge,hellaswag")
    parser.add_argument("--limit", type=int, default=8, help="items per benchmark (per MMLU subject)")
    parser.add_argument("--items-per-round", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    common.header("lm-eval loglikelihood: plain HFLM vs shared-context KV cache")
    quiet_lm_eval()
    model, tokenizer = common.load_model(getattr(torch, args.dtype))
    lms = {name: wrap_model(model, tokenizer, batch_size=args.batch_size, lm_eval_model=name)
           for name in (PLAIN_HFLM, PREFIX_CACHE_HFLM)}
    print(f"{args.dtype}, batch size {args.batch_size}, {args.items_per_round} items per interleaved round\n")
    print(f"{'benchmark':15s} {'items':>5s} {'requests':>8s} {'plain tok/s':>11s} {'cached tok/s':>12s} "
          f"{'speed-up':>8s} {'CPU-time speed-up':>17s} {'forward plain':>13s} {'forward cached':>14s} {'max|Δll|':>9s} {'greedy≠':>7s}")
    for name in args.benchmarks.split(","):
        items = token_requests(lms[PLAIN_HFLM], name, args.limit)
        seconds = {n: 0.0 for n in lms}
        cpu_seconds = {n: 0.0 for n in lms}
        answers: dict[str, list] = {n: [] for n in lms}
        for lm in lms.values():
            lm.reset_meter()
        rounds = [items[i : i + args.items_per_round] for i in range(0, len(items), args.items_per_round)]
        with torch.inference_mode():
            for number, round_items in enumerate(rounds):
                requests = [r for item in round_items for r in item]
                order = list(lms) if number % 2 == 0 else list(reversed(lms))
                for lm_name in order:
                    started, cpu_started = time.perf_counter(), time.process_time()
                    result = lms[lm_name]._loglikelihood_tokens(requests)
                    seconds[lm_name] += time.perf_counter() - started
                    cpu_seconds[lm_name] += time.process_time() - cpu_started
                    answers[lm_name].append(result)
        plain = [a for chunk in answers[PLAIN_HFLM] for a in chunk]
        cached = [a for chunk in answers[PREFIX_CACHE_HFLM] for a in chunk]
        delta = max(abs(p[0] - c[0]) for p, c in zip(plain, cached, strict=True))
        greedy_differs = sum(p[1] != c[1] for p, c in zip(plain, cached, strict=True))
        tokens = lms[PLAIN_HFLM].request_tokens  # the same requests through both
        rate = {n: tokens / seconds[n] for n in lms}
        print(f"{name:15s} {len(items):5d} {len(plain):8d} {rate[PLAIN_HFLM]:11.0f} {rate[PREFIX_CACHE_HFLM]:12.0f} "
              f"{rate[PREFIX_CACHE_HFLM] / rate[PLAIN_HFLM]:7.2f}x "
              f"{cpu_seconds[PLAIN_HFLM] / cpu_seconds[PREFIX_CACHE_HFLM]:16.2f}x {lms[PLAIN_HFLM].forward_tokens:13d} "
              f"{lms[PREFIX_CACHE_HFLM].forward_tokens:14d} {delta:9.2e} {greedy_differs:7d}")
    unusable = lms[PREFIX_CACHE_HFLM].prefix_cache_unusable
    if unusable:
        print(f"\nshared-context scoring fell back to plain HFLM: {unusable}")


if __name__ == "__main__":
    main()
