"""The comparison design on a simulated noisy machine (drift between and within runs, noise,
outliers): the paired design keeps the A/A false-positive rate at its nominal 5% where the
unpaired one does not, and still catches a real 20% slowdown."""

import numpy as np
import pytest

from llmopt_assets.measure.timing_simulation import NoisyMachine, simulate

# 1,000 simulated experiments: a true 5% rate is estimated within ±1.4% (2 binomial SEs).
EXPERIMENTS = 1000


def test_paired_a_a_false_positives_stay_nominal_where_unpaired_ones_do_not() -> None:
    rates = simulate(NoisyMachine(), true_ratio=1.0, pairs=10, experiments=EXPERIMENTS, seed=11)
    assert rates.paired <= 0.05 + 0.014, rates
    # A 5% speed difference between two runs is far outside one run's noise: the unpaired
    # interval calls "significant" about every other time although nothing changed.
    assert rates.unpaired > 0.3, rates


def test_paired_design_detects_a_20_percent_slowdown() -> None:
    rates = simulate(NoisyMachine(), true_ratio=1.2, pairs=10, experiments=EXPERIMENTS, seed=12)
    assert rates.paired >= 0.95, rates


def test_without_drift_between_runs_both_designs_are_nominal() -> None:
    # The check of the check: the unpaired design fails only because of the between-run drift.
    quiet = NoisyMachine(run_spread=0.0, drift=0.0, outlier_rate=0.0)
    rates = simulate(quiet, true_ratio=1.0, pairs=10, experiments=EXPERIMENTS, seed=13)
    assert rates.paired <= 0.05 + 0.014 and rates.unpaired <= 0.05 + 0.014, rates


def test_the_machine_applies_its_effects() -> None:
    rng = np.random.default_rng(0)
    seconds = NoisyMachine(run_spread=0.0, drift=0.0, noise=0.0, outlier_rate=1.0, outlier_slowdown=(0.5, 0.5)).timings(
        rng, np.full((2, 3), 2.0))
    assert seconds == pytest.approx(np.full((2, 3), 3.0))  # every repetition interrupted: 1.5 × 2 s
    drifting = NoisyMachine(run_spread=0.0, drift=0.1, noise=0.0, outlier_rate=0.0).timings(rng, np.ones((1, 4)))[0]
    ratios = drifting[1:] / drifting[:-1]
    assert ratios == pytest.approx([ratios[0]] * 3)  # a constant ln slope per repetition
