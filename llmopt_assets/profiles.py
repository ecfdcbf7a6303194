"""Evaluation profiles: how much data, how many repetitions, how much calibration.

`smoke` keeps CI and the demo within minutes on 2 CPU cores; `paper` is the paper's protocol
(whole WikiText-2 test split, 30 repetitions after a warm-up, §4.1).
"""

from dataclasses import asdict, dataclass, replace


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
    cooldown_seconds: float = 0.0  # idle pause before each measured repetition (thermal settling)

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "smoke": EvaluationProfile(
        name="smoke",
        max_length=512,
        max_tokens=1024,
        warmup=1,
        repetitions=3,
        head_calibration_samples=16,
        head_calibration_length=128,
        sparsegpt_samples=16,
        sparsegpt_length=256,
        distillation="smoke",
    ),
    "paper": EvaluationProfile(
        name="paper",
        max_length=None,
        max_tokens=None,
        warmup=1,
        repetitions=30,
        head_calibration_samples=64,
        head_calibration_length=256,
        # SparseGPT's own paper used 128 x 2048 on a GPU; on 2 CPU cores that is ~1.5 h for a
        # 135M model. 32 x 512 (16k tokens, > 10x the widest layer input) takes ~6 min there.
        sparsegpt_samples=32,
        sparsegpt_length=512,
        distillation="paper",
    ),
}

DEFAULT_MAX_LENGTH = 2048


def get_profile(name: str, **overrides: object) -> EvaluationProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown evaluation profile {name!r}; profiles: {', '.join(PROFILES)}")
    return replace(PROFILES[name], **overrides) if overrides else PROFILES[name]


def window_length(profile: EvaluationProfile, model_context: int) -> int:
    """The perplexity window: the profile's, capped by the model's context."""
    wanted = profile.max_length or DEFAULT_MAX_LENGTH
    return min(wanted, model_context)
