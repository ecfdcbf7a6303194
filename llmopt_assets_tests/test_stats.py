import math
import random

import numpy as np
import pytest
from scipy import stats as scipy_stats

from llmopt_assets.measure.stats import fieller_interval, paired_ratio, ratio_of_means, summarize, welch_p_value


def test_summarize_hand_values():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s.n == 4 and s.mean == 2.5
    assert s.std == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, n − 1 = 3
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t_{0.975, 3} from tables
    assert (s.ci95_low, s.ci95_high) == (pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    assert s.cv == pytest.approx(math.sqrt(5 / 3) / 2.5)


def test_summarize_matches_scipy_t_interval():
    xs = [10.3, 9.8, 10.9, 10.1, 9.5, 10.4, 10.0]
    s = summarize(xs)
    low, high = scipy_stats.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=scipy_stats.sem(xs))
    assert s.ci95_low == pytest.approx(low) and s.ci95_high == pytest.approx(high)
    assert s.std == pytest.approx(np.std(xs, ddof=1))


def test_summarize_single_value_has_no_spread():
    s = summarize([3.0])
    assert (s.n, s.mean) == (1, 3.0)
    assert s.std is None and s.ci95_low is None and s.ci95_high is None and s.cv is None


def test_summarize_rejects_empty_and_nan():
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


def test_welch_p_value_matches_scipy():
    a = [12.1, 11.8, 12.6, 12.0, 12.3]
    b = [10.2, 10.9, 9.7, 10.4, 11.1, 10.0, 10.6]
    expected = scipy_stats.ttest_ind(a, b, equal_var=False).pvalue
    assert welch_p_value(a, b) == pytest.approx(expected)
    assert ratio_of_means(a, b).p_value == pytest.approx(expected)


def _fieller_by_grid(a, b, alpha):
    """Slow reference: the ρ whose Fieller pivot |ā − ρb̄| / √(s_a² + ρ² s_b²) stays below t."""
    mean_a, mean_b = np.mean(a), np.mean(b)
    se2_a, se2_b = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    ratio = mean_a / mean_b
    part_a, part_b = se2_a, ratio**2 * se2_b
    df = (part_a + part_b) ** 2 / (part_a**2 / (len(a) - 1) + part_b**2 / (len(b) - 1))
    t = scipy_stats.t.ppf(1 - alpha / 2, df)
    grid = np.linspace(ratio * 0.5, ratio * 1.5, 2_000_001)
    pivot = np.abs(mean_a - grid * mean_b) / np.sqrt(se2_a + grid**2 * se2_b)
    inside = grid[pivot <= t]
    return inside.min(), inside.max(), grid[1] - grid[0]


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_ratio_interval_matches_grid_inversion(alpha):
    a = [5.1, 4.7, 5.6, 5.0, 4.9, 5.3]
    b = [10.2, 10.9, 9.7, 10.4, 11.1, 10.0, 10.6]
    r = ratio_of_means(a, b, alpha=alpha)
    low, high, step = _fieller_by_grid(a, b, alpha)
    assert r.ratio == pytest.approx(np.mean(a) / np.mean(b))
    assert r.ci95_low == pytest.approx(low, abs=2 * step)
    assert r.ci95_high == pytest.approx(high, abs=2 * step)
    assert r.significant  # half the base: far outside noise


def test_ratio_with_constant_base_is_the_variant_t_interval_scaled():
    a = [2.0, 2.4, 2.2, 2.6]
    b = [4.0, 4.0, 4.0]
    r = ratio_of_means(a, b)
    low, high = scipy_stats.t.interval(0.95, len(a) - 1, loc=np.mean(a), scale=scipy_stats.sem(a))
    assert r.ci95_low == pytest.approx(low / 4.0) and r.ci95_high == pytest.approx(high / 4.0)


def test_ratio_within_noise_is_not_significant():
    base = [10.0, 11.0, 9.0, 10.5, 9.5]
    variant = [10.2, 9.8, 10.9, 9.6, 10.1]
    r = ratio_of_means(variant, base)
    assert not r.significant
    assert r.ci95_low < 1.0 < r.ci95_high
    assert r.p_value > 0.5


def test_ratio_undefined_and_unbounded_cases():
    one = ratio_of_means([2.0], [4.0, 4.2])
    assert one.ratio == pytest.approx(2.0 / 4.1)
    assert one.ci95_low is None and one.p_value is None and not one.significant
    # base mean not clearly away from 0: Fieller's set is unbounded
    wild = ratio_of_means([1.0, 1.1, 0.9], [0.1, -0.3, 0.5])
    assert wild.ci95_low is None and wild.ci95_high is None and not wild.significant
    exact = ratio_of_means([2.0, 2.0], [4.0, 4.0])
    assert (exact.ci95_low, exact.ci95_high, exact.p_value, exact.significant) == (0.5, 0.5, 0.0, True)
    with pytest.raises(ValueError):
        ratio_of_means([1.0, 2.0], [1.0, -1.0])


def test_fieller_hand_value():
    # b known exactly (s_b = 0): interval is (a ± t·s_a) / b
    low, high = fieller_interval(6.0, 0.25, 3.0, 0.0, 2.0)
    assert (low, high) == (pytest.approx(5.0 / 3.0), pytest.approx(7.0 / 3.0))
    assert fieller_interval(6.0, 0.25, 1.0, 1.0, 2.0) is None


def test_ratio_interval_covers_true_ratio_about_95_percent():
    rng = random.Random(1234)
    true_ratio = 0.8
    trials, covered = 1500, 0
    for _ in range(trials):
        base = [rng.gauss(10.0, 1.0) for _ in range(8)]
        variant = [rng.gauss(8.0, 0.5) for _ in range(12)]
        r = ratio_of_means(variant, base)
        covered += r.ci95_low <= true_ratio <= r.ci95_high
    assert 0.93 <= covered / trials <= 0.97


def test_summaries_are_plain_floats_for_json():
    import json

    s = summarize([1.0, 2.0, 4.0])
    r = ratio_of_means([1.0, 2.0, 4.0], [2.0, 3.0, 3.5])
    assert all(type(v) in (int, float) for v in s.to_dict().values())
    assert json.loads(json.dumps(r.to_dict()))["ratio"] == pytest.approx(7 / 8.5)


def test_paired_ratio_hand_values():
    # ln ratios 0.1, 0.2, 0.3, 0.0: mean 0.15, sum of squared deviations 0.05, s = √(0.05/3).
    base = [2.0, 3.0, 1.5, 4.0]
    variant = [b * math.exp(d) for b, d in zip(base, [0.1, 0.2, 0.3, 0.0])]
    r = paired_ratio(variant, base)
    half = 3.182446305284263 * math.sqrt(0.05 / 3) / 2  # t_{0.975, 3} from tables, s/√4
    assert r.ratio == pytest.approx(math.exp(0.15))
    assert (r.ci95_low, r.ci95_high) == (pytest.approx(math.exp(0.15 - half)), pytest.approx(math.exp(0.15 + half)))
    assert r.ci95_low == pytest.approx(0.94608, abs=1e-5) and r.ci95_high == pytest.approx(1.42679, abs=1e-5)
    assert not r.significant and r.pairs == 4  # the interval covers 1
    assert r.log_ratio_std == pytest.approx(math.sqrt(0.05 / 3))


def test_paired_ratio_matches_scipy_paired_t_test_on_logs():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.9, 1.3, 12)
    variant = base * 1.08 * rng.lognormal(0.0, 0.03, 12)
    r = paired_ratio(variant.tolist(), base.tolist())
    test = scipy_stats.ttest_rel(np.log(variant), np.log(base))
    low, high = test.confidence_interval(0.95)
    assert r.p_value == pytest.approx(test.pvalue)
    assert r.ci95_low == pytest.approx(math.exp(low)) and r.ci95_high == pytest.approx(math.exp(high))
    assert r.significant == (test.pvalue < 0.05)
    assert r.ratio == pytest.approx(scipy_stats.gmean(variant / base))


def test_paired_ratio_cancels_a_drift_that_the_unpaired_interval_cannot():
    # The machine slows down 30% over the run; each pair sees the same slowness in both arms.
    drift = np.linspace(1.0, 1.3, 10)
    wobble = np.array([1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0])
    base, variant = drift, drift * 1.05 * wobble
    paired = paired_ratio(variant.tolist(), base.tolist())
    unpaired = ratio_of_means(variant.tolist(), base.tolist())
    assert paired.significant and paired.ci95_low > 1.03 and paired.ci95_high < 1.07
    assert not unpaired.significant  # the drift's spread swamps the 5% change


def test_paired_ratio_edge_cases():
    one = paired_ratio([1.2], [1.0])
    assert one.ratio == pytest.approx(1.2) and one.ci95_low is None and one.p_value is None and not one.significant
    same = paired_ratio([2.0, 4.0], [1.0, 2.0])
    assert (same.ratio, same.ci95_low, same.ci95_high, same.significant) == (pytest.approx(2.0),) * 3 + (True,)
    equal = paired_ratio([1.0, 2.0], [1.0, 2.0])
    assert equal.p_value == 1.0 and not equal.significant
    with pytest.raises(ValueError, match="pairs must match"):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        paired_ratio([1.0, 0.0], [1.0, 1.0])
