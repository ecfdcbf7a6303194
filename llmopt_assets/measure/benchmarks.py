"""The paper's second quality round (§3.4.1, §4): five lm-eval benchmarks on an in-memory model.

`lm_eval.simple_evaluate` runs on an `HFLM` that wraps the loaded model as it is, so a quantized
or head-pruned variant is scored exactly as measured elsewhere. Tasks come from the offline
definitions in `lm_eval_tasks/` (the files in data/) or, where the hub is reachable, lm-eval's
official tasks of the same names.
"""

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Bump with any change to how a benchmark is run or scored here or in lm_eval_tasks/: Dagster
# then marks benchmark_run stale.
CODE_VERSION = "2"
TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
# lm-eval's default few-shot seed: shots are the same ones the harness picks by default.
FEWSHOT_SEED = 1234
SOURCES = ("local", "hub")
# The lm-eval model over the in-memory variant: lm-eval's HFLM as it is, or HFLM with each shared
# context run once and its choices scored from the KV cache (measure/prefix_cache.py; the same
# log-likelihoods up to float rounding, several times fewer tokens through the model).
PLAIN_HFLM = "hflm"
PREFIX_CACHE_HFLM = "hflm-prefix-cache"
LM_EVAL_MODELS = (PLAIN_HFLM, PREFIX_CACHE_HFLM)


@dataclass(frozen=True)
class Benchmark:
    """One of the paper's benchmarks with its shot count and metric (paper §4, as in the Open
    LLM Leaderboard v1)."""

    name: str
    num_fewshot: int
    metric: str
    # "one_of_n": the score counts correct picks, chance = mean of 1/choices, granularity 1/items.
    # "true_mass": truthfulqa_mc2's normalised probability on the true answers, chance = the mass
    # a uniform guess puts on them (true answers / answers), a continuous score.
    chance_rule: str = "one_of_n"

    def task(self, source: str) -> str:
        if source not in SOURCES:
            raise ValueError(f"benchmark source must be one of {SOURCES}, got {source!r}")
        return f"{self.name}_local" if source == "local" else self.name


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("arc_challenge", 25, "acc_norm"),
        Benchmark("hellaswag", 10, "acc_norm"),
        Benchmark("mmlu", 5, "acc"),
        Benchmark("truthfulqa_mc2", 0, "acc", chance_rule="true_mass"),
        Benchmark("winogrande", 5, "acc"),
    )
}


@dataclass(frozen=True)
class BenchmarkScore:
    benchmark: str
    task: str
    metric: str
    value: float
    stderr: float | None
    stderr_method: str
    items: int
    num_fewshot: int
    limit: int | None  # items per task (per MMLU subject, as lm-eval applies it); None: all
    chance: float  # expected score of random answers over the scored items
    discrete: bool  # value is a count of correct items / items
    lm_eval_version: str
    task_version: str
    task_hash: str  # lm-eval's hash of the scored docs, prompts and targets
    seconds: float
    loglikelihood_requests: int
    loglikelihood_tokens: int  # context + continuation tokens the requests asked to score
    forward_tokens: int  # tokens through the model, padding included, shared contexts once
    loglikelihood_seconds: float
    tokens_per_second: float | None  # loglikelihood_tokens / loglikelihood_seconds
    source: str
    fewshot_seed: int
    lm_eval_model: str  # LM_EVAL_MODELS: plain HFLM or shared-context scoring

    def to_dict(self) -> dict:
        return asdict(self)


def _lm_classes() -> dict[str, type]:
    from lm_eval.models.huggingface import HFLM

    from llmopt_assets.measure.prefix_cache import group_by_context, score_from_shared_context

    class MeteredHFLM(HFLM):
        """HFLM that counts and times its loglikelihood work (the throughput we report)."""

        lm_eval_model = PLAIN_HFLM

        def reset_meter(self) -> None:
            self.requests = 0
            self.request_tokens = 0
            self.forward_tokens = 0
            self.loglikelihood_seconds = 0.0

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
            started = time.perf_counter()
            result = self._score_requests(requests, override_bs)
            self.loglikelihood_seconds += time.perf_counter() - started
            self.requests += len(requests)
            # HFLM scores at most max_length + 1 tokens of each request (it truncates the left).
            self.request_tokens += sum(
                min(len(context) + len(continuation), self.max_length + 1) for _, context, continuation in requests
            )
            return result

        def _score_requests(self, requests, override_bs):
            return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)

        def _model_call(self, inps, attn_mask=None, labels=None):
            self.forward_tokens += inps.numel()
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    class PrefixCacheHFLM(MeteredHFLM):
        """MeteredHFLM whose requests sharing a context run it once and score every continuation
        from its KV cache. Requests HFLM would truncate, lone contexts, and every request of a
        model whose forward pass cannot continue from a cache take HFLM's own path."""

        lm_eval_model = PREFIX_CACHE_HFLM
        prefix_cache_unusable: str | None = None  # why the model fell back to the plain path

        def _count_forward(self, tokens: int) -> None:
            self.forward_tokens += tokens

        def _score_requests(self, requests, override_bs):
            if self.backend != "causal" or self.prefix_cache_unusable:
                return super()._score_requests(requests, override_bs)
            shared = group_by_context(requests, self.max_length)
            results: list[tuple[float, bool] | None] = [None] * len(requests)
            plain = list(shared.plain)
            batch_size = self.batch_size if isinstance(self.batch_size, int) else override_bs or 0
            for context, indices in shared.groups.items():
                if self.prefix_cache_unusable:
                    plain += indices
                    continue
                try:
                    with torch.no_grad(), torch.autocast(
                        device_type=self.device.type, dtype=self.mixed_precision_dtype,
                        enabled=self.mixed_precision_dtype is not None,
                    ):
                        scored = score_from_shared_context(
                            self.model, context, [requests[i][2] for i in indices],
                            batch_size=batch_size or len(indices), softmax_dtype=self.softmax_dtype,
                            on_forward=self._count_forward,
                        )
                except (TypeError, ValueError, RuntimeError, AttributeError, NotImplementedError) as error:
                    # A forward pass that cannot continue from a cache: this model takes HFLM's path.
                    self.prefix_cache_unusable = f"{type(error).__name__}: {error}"
                    logging.getLogger(__name__).warning(
                        "shared-context scoring unusable on %s, plain HFLM instead: %s",
                        type(self.model).__name__, self.prefix_cache_unusable,
                    )
                    plain += indices
                    continue
                for index, answer in zip(indices, scored, strict=True):
                    results[index] = answer
                    if requests[index][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
            if plain:
                plain.sort()
                answers = super()._score_requests([requests[i] for i in plain], override_bs)
                for index, answer in zip(plain, answers, strict=True):
                    results[index] = answer
            return results

    return {PLAIN_HFLM: MeteredHFLM, PREFIX_CACHE_HFLM: PrefixCacheHFLM}


def wrap_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int = 4,
    max_length: int | None = None,
    lm_eval_model: str = PREFIX_CACHE_HFLM,
):
    """An lm-eval model over the in-memory transformers model (nothing reloaded or re-quantized)."""
    if lm_eval_model not in LM_EVAL_MODELS:
        raise ValueError(f"lm_eval_model must be one of {LM_EVAL_MODELS}, got {lm_eval_model!r}")
    lm_class = _lm_classes()[lm_eval_model]
    lm = lm_class(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    lm.reset_meter()
    return lm


def task_manager(source: str, data_dir: Path | None = None):
    """lm-eval's TaskManager over our offline tasks (data_dir reaches their loaders as task
    metadata), or over lm-eval's own tasks for the hub."""
    from lm_eval.tasks import TaskManager

    if source == "local":
        metadata = {"data_dir": str(data_dir)} if data_dir else None
        return TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)
    if source == "hub":
        return TaskManager()
    raise ValueError(f"benchmark source must be one of {SOURCES}, got {source!r}")


def chance_level(benchmark: Benchmark, samples: Sequence[dict]) -> float:
    """The expected score of random answers over the scored items, from the items themselves."""
    if not samples:
        raise ValueError(f"{benchmark.name}: no scored items to compute a chance level from")
    if benchmark.chance_rule == "true_mass":
        labels = [s["doc"]["mc2_targets"]["labels"] for s in samples]
        return sum(sum(item) / len(item) for item in labels) / len(labels)
    if benchmark.chance_rule == "one_of_n":
        return sum(1 / len(s["arguments"]) for s in samples) / len(samples)
    raise ValueError(f"{benchmark.name}: unknown chance rule {benchmark.chance_rule!r}")


def _stderr(result: dict, metric: str, samples: Sequence[dict]) -> tuple[float | None, str]:
    """lm-eval's standard error; where it gives none (a group whose subtasks have one item each,
    as MMLU with limit 1) the standard error of the mean over the pooled items, which is what a
    size-weighted group mean is."""
    stderr = result.get(f"{metric}_stderr,none")
    if isinstance(stderr, (int, float)) and math.isfinite(stderr):
        return float(stderr), "lm-eval"
    values = [float(s[metric]) for s in samples if metric in s]
    if len(values) < 2:
        return None, "unavailable: fewer than 2 items"
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(variance / len(values)), "pooled items (lm-eval gave none)"


def _task_hash(samples: Sequence[dict]) -> str:
    from lm_eval.utils import hash_string

    # As lm-eval's EvaluationTracker hashes a task's samples.
    return hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in samples))


def run_benchmark(
    lm,
    benchmark: Benchmark,
    *,
    tasks,
    limit: int | None,
    source: str = "local",
    seed: int = FEWSHOT_SEED,
) -> BenchmarkScore:
    """One benchmark through `lm_eval.simple_evaluate`, with its shots, seed and limit."""
    import lm_eval

    task = benchmark.task(source)
    lm.reset_meter()
    started = time.perf_counter()
    output = lm_eval.simple_evaluate(
        model=lm,
        tasks=[task],
        num_fewshot=benchmark.num_fewshot,
        limit=limit,
        task_manager=tasks,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        log_samples=True,
        verbosity="ERROR",  # not one truncation warning per request
    )
    seconds = time.perf_counter() - started
    if output is None or task not in output["results"]:
        raise RuntimeError(f"lm-eval produced no result for {task}")
    result = output["results"][task]
    key = f"{benchmark.metric},none"
    if key not in result or not isinstance(result[key], (int, float)):
        raise RuntimeError(f"lm-eval's result for {task} has no {benchmark.metric}: {sorted(result)}")
    samples = [s for per_task in output["samples"].values() for s in per_task]
    stderr, stderr_method = _stderr(result, benchmark.metric, samples)
    leaf_configs = [output["configs"][name] for name in output["samples"]]
    return BenchmarkScore(
        benchmark=benchmark.name,
        task=task,
        metric=benchmark.metric,
        value=float(result[key]),
        stderr=stderr,
        stderr_method=stderr_method,
        items=len(samples),
        num_fewshot=benchmark.num_fewshot,
        limit=limit,
        chance=chance_level(benchmark, samples),
        discrete=benchmark.chance_rule == "one_of_n",
        lm_eval_version=lm_eval.__version__,
        task_version=str(output["versions"].get(task, leaf_configs[0].get("metadata", {}).get("version"))),
        task_hash=_task_hash(samples),
        seconds=seconds,
        loglikelihood_requests=lm.requests,
        loglikelihood_tokens=lm.request_tokens,
        forward_tokens=lm.forward_tokens,
        loglikelihood_seconds=lm.loglikelihood_seconds,
        tokens_per_second=lm.request_tokens / lm.loglikelihood_seconds if lm.loglikelihood_seconds > 0 else None,
        source=source,
        fewshot_seed=seed,
        lm_eval_model=lm.lm_eval_model,
    )


def run_benchmarks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    names: Sequence[str],
    limits: dict[str, int | None] | None = None,
    *,
    source: str = "local",
    data_dir: Path | None = None,
    batch_size: int = 4,
    seed: int = FEWSHOT_SEED,
    lm_eval_model: str = PREFIX_CACHE_HFLM,
    on_score=None,
) -> tuple[list[BenchmarkScore], dict[str, str]]:
    """Every named benchmark on the in-memory model; `limits` caps items per benchmark. Returns
    the scores and, per benchmark that failed, why (the others still run)."""
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; known: {', '.join(BENCHMARKS)}")
    quiet_lm_eval()
    limits = limits or {}
    lm = wrap_model(model, tokenizer, batch_size=batch_size, lm_eval_model=lm_eval_model)
    tasks = task_manager(source, data_dir)
    scores, failures = [], {}
    with torch.inference_mode():
        for name in names:
            try:
                score = run_benchmark(lm, BENCHMARKS[name], tasks=tasks, limit=limits.get(name), source=source, seed=seed)
            except (RuntimeError, ValueError, KeyError, OSError) as error:
                failures[name] = f"{type(error).__name__}: {error}"
                continue
            scores.append(score)
            if on_score is not None:
                on_score(score)
    return scores, failures


def quiet_lm_eval() -> None:
    """lm-eval and datasets log every task load and draw progress bars; keep warnings only."""
    import datasets

    datasets.disable_progress_bars()
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def impossible_scores(scores: Sequence[BenchmarkScore]) -> list[str]:
    """Scores no run over their item count could produce (see score_is_possible)."""
    return [
        f"{s.benchmark}: {s.metric} {s.value!r} over {s.items} items" for s in scores if not score_is_possible(s)
    ]


def score_is_possible(score: BenchmarkScore, tolerance: float = 1e-6) -> bool:
    """A fraction in [0, 1], and for a count-based score a multiple of 1/items."""
    if not (0.0 <= score.value <= 1.0) or score.items <= 0:
        return False
    if not score.discrete:
        return True
    correct = score.value * score.items
    return abs(correct - round(correct)) <= tolerance * score.items
