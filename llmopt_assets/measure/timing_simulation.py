"""A simulated noisy machine, to check the comparison design itself: how often does it call an
A/A comparison significant (false positives), and how often does it catch a real slowdown?

The machine (all effects multiplicative, drawn independently per simulated experiment):
- a speed factor per run (process): what changes between a base measured now and a variant
  measured later (other load, clocks, thermals): ln-normal with sd ``run_spread``;
- a linear drift inside a run (ln slope per repetition, normal with sd ``drift``);
- noise per repetition (ln-normal, sd ``noise``);
- outliers: with probability ``outlier_rate`` a repetition is interrupted and takes
  1 + U(``outlier_slowdown``) times as long.

Two designs are compared on it: the unpaired one this project used before (base and variant each
in their own run, Fieller interval / Welch test, `stats.ratio_of_means`) and the paired one
(`measure.comparison`'s ABBA/BAAB order in one run, `stats.paired_ratio`). Timings are drawn
with vectorized numpy; each simulated experiment is then judged by the real statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from llmopt_assets.measure.comparison import arm_schedule
from llmopt_assets.measure.stats import paired_ratio, ratio_of_means


@dataclass(frozen=True)
class NoisyMachine:
    run_spread: float = 0.05
    drift: float = 0.002
    noise: float = 0.02
    outlier_rate: float = 0.02
    outlier_slowdown: tuple[float, float] = (0.1, 0.5)

    def timings(self, rng: np.random.Generator, cost: np.ndarray) -> np.ndarray:
        """Seconds of one run per row of ``cost`` ([experiments, repetitions in run order])."""
        experiments, length = cost.shape
        run = rng.normal(0.0, self.run_spread, (experiments, 1))
        slope = rng.normal(0.0, self.drift, (experiments, 1)) * np.arange(length)
        noise = rng.normal(0.0, self.noise, (experiments, length))
        interrupted = rng.random((experiments, length)) < self.outlier_rate
        outliers = 1.0 + interrupted * rng.uniform(*self.outlier_slowdown, (experiments, length))
        return cost * np.exp(run + slope + noise) * outliers

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DesignRates:
    """Fraction of simulated experiments whose comparison came out significant at 5%."""

    true_ratio: float
    pairs: int
    experiments: int
    paired: float
    unpaired: float


def simulate(machine: NoisyMachine, true_ratio: float, pairs: int, experiments: int, seed: int = 0) -> DesignRates:
    """Run ``experiments`` comparisons of a variant costing ``true_ratio`` × the base, both ways."""
    rng = np.random.default_rng(seed)
    # Paired: one run, the arms in ABBA/BAAB blocks (a different seeded order per experiment).
    paired_hits = 0
    orders = [arm_schedule(pairs, int(s)) for s in rng.integers(0, 2**31, experiments)]
    is_variant = np.array([[arm == "variant" for _, arm in order] for order in orders])
    together = machine.timings(rng, np.where(is_variant, true_ratio, 1.0))
    for timings, order in zip(together, orders):
        by_arm: dict[str, list[float]] = {"base": [0.0] * pairs, "variant": [0.0] * pairs}
        for seconds, (pair, arm) in zip(timings, order):
            by_arm[arm][pair] = float(seconds)
        paired_hits += paired_ratio(by_arm["variant"], by_arm["base"]).significant
    # Unpaired: the base in one run, the variant in another (its own speed factor and drift).
    base_runs = machine.timings(rng, np.ones((experiments, pairs)))
    variant_runs = machine.timings(rng, np.full((experiments, pairs), true_ratio))
    unpaired_hits = sum(
        ratio_of_means(v.tolist(), b.tolist()).significant for v, b in zip(variant_runs, base_runs)
    )
    return DesignRates(true_ratio, pairs, experiments, paired_hits / experiments, unpaired_hits / experiments)
