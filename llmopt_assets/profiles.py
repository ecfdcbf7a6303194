"""Evaluation profiles: how much data, how many repetitions, how much calibration.

`smoke` keeps CI and the demo within minutes on 2 CPU cores; `paper` is the paper's protocol
(whole WikiText-2 test split, 30 timed repetitions after a warm-up, §4.1: here 30 interleaved
base/variant pairs).

Perplexity is deterministic, so `perplexity_run` evaluates once (`warmup`, `repetitions`: its
timing is information only). Tc and Ec come from `comparison_run`: `pairs` interleaved pairs of
repetitions, each lasting at least `min_repetition_seconds` for the faster arm, after a warm-up
of at most `max_warmup_rounds` rounds (see `measure.comparison`).
"""

from dataclasses import asdict, dataclass, field, replace


PAPER_BENCHMARKS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2", "winogrande")

from llmopt_assets.measure.benchmarks import LM_EVAL_MODELS, PREFIX_CACHE_HFLM
from llmopt_assets.measure.comparison import ComparisonProtocol
from llmopt_assets.measure.perplexity import PerplexityProtocol


@dataclass(frozen=True)
class EvaluationProfile:
    name: str
    max_length: int | None  # None: min(model context, 2048), the window of the paper's HF evaluation
    max_tokens: int | None  # perplexity token budget; None: the whole test split
    warmup: int
    repetitions: int
    head_calibration_samples: int
    head_calibration_length: int
    sparsegpt_samples: int
    sparsegpt_length: int
    distillation: str  # DistillationConfig preset name
    # What students train on (techniques/distillation_data.py): "teacher-samples" (offline,
    # sequence-level KD), "hf:<path>[:<config>]:<split>" (streamed), or "wikitext2-valid" (the
    # evaluation domain: on purpose only); and how many tokens of it (validation slice included).
    distillation_data: str = "teacher-samples"
    distillation_tokens: int = 4096
    cooldown_seconds: float = 0.0  # idle pause before each measured repetition (thermal settling)
    pairs: int = 30  # interleaved base/variant pairs of a comparison
    min_repetition_seconds: float = 1.0  # auto-ranging target of one repetition (pyperf/timeit)
    max_warmup_rounds: int = 10  # warm-up cap when the timing does not settle
    # The benchmark round (measure.benchmarks): which of the paper's five, items per task (per
    # MMLU subject, as lm-eval applies a limit; a missing name: every item), and where the tasks
    # come from: "local" (data/, offline) or "hub" (lm-eval's official tasks, needs the network).
    benchmarks: tuple[str, ...] = PAPER_BENCHMARKS
    benchmark_limits: dict[str, int] = field(default_factory=dict)
    benchmark_source: str = "local"
    benchmark_batch_size: int = 4
    # lm-eval's model: "hflm-prefix-cache" (each item's shared context run once, its choices scored
    # from the KV cache: the same log-likelihoods, fewer tokens) or "hflm" (lm-eval's HFLM as is).
    benchmark_lm_eval_model: str = PREFIX_CACHE_HFLM
    # How head pruning measures "a single token receives most of the attention" (§3.1); see
    # techniques/head_pruning.py: "single-key-share" (the literal reading) or "per-query-max".
    head_criterion: str = "single-key-share"  # HEAD_CRITERIA[0]
    # SmoothQuant's calibration for int8-dyn (techniques/smoothing.py): windows of the calibration
    # split whose per-channel max |activation| sets the smoothing factors.
    smoothing_samples: int = 16
    smoothing_length: int = 256  # 4k tokens: what benchmarks/int8_activation_scaling.py measured with

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "smoke": EvaluationProfile(
        name="smoke",
        max_length=512,
        max_tokens=1024,
        warmup=0,
        repetitions=1,
        head_calibration_samples=16,
        head_calibration_length=128,
        sparsegpt_samples=16,
        sparsegpt_length=256,
        distillation="smoke",
        # ~25 comparisons in the demo: 6 pairs of ≥ 1 s repetitions after ≤ 3 warm-up rounds is
        # ~15-20 s each for SmolLM2 on 2 cores, and a t interval with 5 degrees of freedom.
        pairs=6,
        min_repetition_seconds=1.0,
        max_warmup_rounds=3,
        # Minutes on 2 cores for one model: scores with wide error bars (see their stderr), a
        # check that the round works, not a measurement of the paper's numbers.
        benchmark_limits={"arc_challenge": 4, "hellaswag": 4, "mmlu": 1, "truthfulqa_mc2": 4, "winogrande": 8},
    ),
    "paper": EvaluationProfile(
        name="paper",
        max_length=None,
        max_tokens=None,
        warmup=0,
        repetitions=1,
        head_calibration_samples=64,
        head_calibration_length=256,
        # SparseGPT's own paper used 128 x 2048 on a GPU; on 2 CPU cores that is ~1.5 h for a
        # 135M model. 32 x 512 (16k tokens, > 10x the widest layer input) takes ~6 min there.
        sparsegpt_samples=32,
        sparsegpt_length=512,
        distillation="paper",
        # 4 epochs of the paper preset's 164M planned tokens: a GPU job when sampled from the teacher
        distillation_tokens=41_000_000,
        pairs=30,
        min_repetition_seconds=1.0,
        max_warmup_rounds=10,
    ),
}

DEFAULT_MAX_LENGTH = 2048
# Head-pruning criteria (techniques/head_pruning.py), the literal reading of §3.1 first.
HEAD_CRITERIA = ("single-key-share", "per-query-max")


def get_profile(name: str, **overrides: object) -> EvaluationProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown evaluation profile {name!r}; profiles: {', '.join(PROFILES)}")
    profile = replace(PROFILES[name], **overrides) if overrides else PROFILES[name]
    if profile.head_criterion not in HEAD_CRITERIA:
        raise ValueError(
            f"unknown head-pruning criterion {profile.head_criterion!r}; criteria: {', '.join(HEAD_CRITERIA)}"
        )
    if profile.benchmark_lm_eval_model not in LM_EVAL_MODELS:
        raise ValueError(
            f"unknown benchmark_lm_eval_model {profile.benchmark_lm_eval_model!r}; known: {', '.join(LM_EVAL_MODELS)}"
        )
    return profile


def window_length(profile: EvaluationProfile, model_context: int) -> int:
    """The perplexity window: the profile's, capped by the model's context."""
    wanted = profile.max_length or DEFAULT_MAX_LENGTH
    return min(wanted, model_context)


def perplexity_protocol(profile: EvaluationProfile, model_context: int, dtype: str) -> PerplexityProtocol:
    """WikiText-2 raw test, rows joined with "\\n\\n", non-overlapping windows of the profile's
    length capped by the model's context: the one protocol every perplexity and comparison uses."""
    length = window_length(profile, model_context)
    return PerplexityProtocol(
        dataset="wikitext-2-raw-v1/test",
        joiner="\n\n",
        max_length=length,
        stride=length,
        dtype=dtype,
        max_tokens=profile.max_tokens,
    )


def comparison_protocol(profile: EvaluationProfile, seed: int = 0) -> ComparisonProtocol:
    """The paired time/energy experiment the profile asks for (see `measure.comparison`)."""
    return ComparisonProtocol(
        pairs=profile.pairs,
        min_repetition_seconds=profile.min_repetition_seconds,
        max_warmup_rounds=profile.max_warmup_rounds,
        cooldown_seconds=profile.cooldown_seconds,
        seed=seed,
    )
