"""The paper's optimization equation (§3.4, Eq. 1) and its quality ratios (§3.4.1).

opt = Pc^1.5 · (α·Tc + β·Ec), with Tc, Ec = variant / base time and energy. Lower is better.

Pc must grow when quality gets worse. The extracted text of §3.4.1 prints the ratios upside
down (as written they would reward quality loss); we implement the paper's stated intent:
- lower-is-better scores (perplexity): Pc = P_variant / P_base;
- higher-is-better scores with chance level x: Pc_n = (S_base − 0.8x) / (S_variant − 0.8x);
- several measurements: the penalty Pc^1.5 becomes the mean of the Pc_n^1.5.
"""

from collections.abc import Sequence
from dataclasses import dataclass

# Table 3 of the paper.
PRESETS: dict[str, tuple[float, float]] = {
    "balanced": (0.5, 0.5),
    "energy": (0.1, 0.9),
    "runtime": (0.9, 0.1),
}
QUALITY_EXPONENT = 1.5
CHANCE_SAFETY = 0.8  # x·4/5: "a small safety net to models which perform worse than random"


@dataclass(frozen=True)
class QualityScore:
    base: float
    variant: float
    higher_is_better: bool = False
    chance: float = 0.0  # expected score of random answers, for higher-is-better scores
    name: str = "perplexity"


class BelowChanceFloor(ValueError):
    """A higher-is-better score at or below 0.8·chance: Pc_n = (S_base − 0.8x)/(S_variant − 0.8x)
    would be negative, infinite or undefined, so there is no quality ratio and no opt."""


def chance_floor(chance: float) -> float:
    return CHANCE_SAFETY * chance


def quality_ratio(score: QualityScore) -> float:
    """Pc_n for one measurement: > 1 when the variant is worse than the base."""
    if score.higher_is_better:
        floor = chance_floor(score.chance)
        for role, value in (("base", score.base), ("variant", score.variant)):
            if value <= floor:
                raise BelowChanceFloor(
                    f"{score.name}: the {role}'s score {value:.4f} is at or below 0.8 × chance "
                    f"({floor:.4f}), where Pc_n = (S_base − 0.8x)/(S_variant − 0.8x) is undefined: no opt"
                )
        return (score.base - floor) / (score.variant - floor)
    if score.base <= 0 or score.variant <= 0:
        raise ValueError(
            f"{score.name}: lower-is-better scores must be positive for a ratio, got base "
            f"{score.base} and variant {score.variant}"
        )
    return score.variant / score.base


def quality_penalty(scores: Sequence[QualityScore]) -> float:
    """The term that multiplies the cost: mean over measurements of Pc_n^1.5. Raises
    BelowChanceFloor when a higher-is-better score of the base or the variant is at or below
    0.8·chance."""
    if not scores:
        raise ValueError("at least one quality measurement is needed")
    return sum(quality_ratio(s) ** QUALITY_EXPONENT for s in scores) / len(scores)


def opt_score(penalty: float, time_ratio: float, energy_ratio: float, alpha: float, beta: float) -> float:
    """Eq. 1 with the quality term already raised to 1.5 (see quality_penalty)."""
    return penalty * (alpha * time_ratio + beta * energy_ratio)


def opt_from_ratios(pc: float, tc: float, ec: float, alpha: float, beta: float) -> float:
    """Eq. 1 from a single perplexity ratio: Pc^1.5 · (α·Tc + β·Ec)."""
    return opt_score(pc**QUALITY_EXPONENT, tc, ec, alpha, beta)


def preset_weights(name: str) -> tuple[float, float]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
