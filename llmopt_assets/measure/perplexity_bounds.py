"""Is a measured perplexity plausible? Bounds that a broken variant crosses and a working one does not."""

from __future__ import annotations

import math
from dataclasses import dataclass

# A compressed variant this many times worse than its base has stopped being the same model;
# the paper's worst combinations stay within a few times the base. Our named choice.
MAX_RATIO_TO_BASE = 10.0


@dataclass(frozen=True)
class PerplexityVerdict:
    plausible: bool
    broken: bool  # True: not finite or no better than guessing; False with plausible=False: only
    # far above the base (a warning: it may be a real, very lossy technique)
    reasons: list[str]


def perplexity_verdict(perplexity: float, vocab_size: int, base_perplexity: float | None) -> PerplexityVerdict:
    """A model that guesses uniformly over its vocabulary has perplexity = vocab size; a model at
    or above that has learned nothing (or was broken by compression). Against the base (when
    measured): more than MAX_RATIO_TO_BASE times worse is flagged."""
    if vocab_size <= 1:
        raise ValueError(f"vocabulary size must exceed 1, got {vocab_size}")
    reasons = []
    if not math.isfinite(perplexity):
        reasons.append(f"perplexity is {perplexity}")
    elif perplexity >= vocab_size:
        reasons.append(f"perplexity {perplexity:.1f} is no better than a uniform guess over {vocab_size} tokens")
    broken = bool(reasons)
    if base_perplexity is not None and math.isfinite(perplexity):
        ratio = perplexity / base_perplexity
        if ratio > MAX_RATIO_TO_BASE:
            reasons.append(f"perplexity is {ratio:.1f}× the base's {base_perplexity:.2f} (bound {MAX_RATIO_TO_BASE:g}×)")
    return PerplexityVerdict(plausible=not reasons, broken=broken, reasons=reasons)
