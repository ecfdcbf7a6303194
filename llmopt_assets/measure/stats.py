"""Error bars for repeated measurements, and for the variant/base ratios the opt score uses.

The paper reports means of 30 runs; we add the spread: a t-based 95% confidence interval for
each mean; for a ratio of two independent means Fieller's interval and Welch's t-test; and for
Tc, Ec in opt = Pc^1.5·(α·Tc + β·Ec), measured as pairs of interleaved base/variant repetitions,
the paired log-ratio interval (`paired_ratio`), so a ratio within noise is not read as a change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Summary:
    """Mean of n repetitions with sample std (ddof=1), 95% t interval and CV = std/mean.

    With n=1 the spread is unknown: std, the interval and cv are None, not 0.
    """

    n: int
    mean: float
    std: float | None
    ci95_low: float | None
    ci95_high: float | None
    cv: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _checked(values: Sequence[float], what: str) -> list[float]:
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError(f"{what}: no values")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"{what}: non-finite value in {xs}")
    return xs


def _mean_var(xs: list[float]) -> tuple[float, float | None]:
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, None
    return mean, math.fsum((x - mean) ** 2 for x in xs) / (n - 1)


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """mean ± t_{(1+confidence)/2, n−1} · s/√n (Student t: the runs are few and noisy)."""
    xs = _checked(values, "summarize")
    n = len(xs)
    mean, var = _mean_var(xs)
    if var is None:
        return Summary(n, mean, None, None, None, None)
    std = math.sqrt(var)
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    cv = std / abs(mean) if mean != 0 else None
    return Summary(n, mean, std, mean - half, mean + half, cv)


@dataclass(frozen=True)
class RatioSummary:
    """mean(variant)/mean(base) with a (1−alpha) Fieller interval and Welch's p-value.

    ``ci95_low``/``ci95_high`` are None when the interval is undefined (fewer than two runs
    on a side) or unbounded (the base mean is not clearly away from zero). ``significant``:
    the means differ by Welch's test at ``alpha`` and the interval excludes 1.
    """

    ratio: float
    ci95_low: float | None
    ci95_high: float | None
    p_value: float | None
    significant: bool

    def to_dict(self) -> dict[str, float | bool | None]:
        return asdict(self)


def welch_satterthwaite_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Degrees of freedom of (mean_a − mean_b) with unequal variances."""
    sa, sb = var_a / n_a, var_b / n_b
    return (sa + sb) ** 2 / (sa**2 / (n_a - 1) + sb**2 / (n_b - 1))


def welch_p_value(variant: Sequence[float], base: Sequence[float]) -> float | None:
    """Two-sided Welch t-test of equal means; None with fewer than two runs on a side.

    Both samples constant: p = 1 if the means are equal, else 0 (no noise, a sure difference).
    """
    a, b = _checked(variant, "variant"), _checked(base, "base")
    if len(a) < 2 or len(b) < 2:
        return None
    mean_a, var_a = _mean_var(a)
    mean_b, var_b = _mean_var(b)
    assert var_a is not None and var_b is not None
    se2 = var_a / len(a) + var_b / len(b)
    if se2 == 0:
        return 1.0 if mean_a == mean_b else 0.0
    t = (mean_a - mean_b) / math.sqrt(se2)
    df = welch_satterthwaite_df(var_a, len(a), var_b, len(b))
    return float(2 * scipy_stats.t.sf(abs(t), df))


def fieller_interval(
    mean_a: float, se2_a: float, mean_b: float, se2_b: float, t: float
) -> tuple[float, float] | None:
    """Fieller's interval for mean_a/mean_b from independent means with squared SEs.

    The set of ρ with (a − ρb)² ≤ t²(s_a² + ρ² s_b²) is the quadratic
    (b² − t²s_b²)ρ² − 2abρ + (a² − t²s_a²) ≤ 0, bounded only when b² > t²s_b²; its roots are
    (ab ± t·√(a²s_b² + b²s_a² − t²s_a²s_b²)) / (b² − t²s_b²). None when unbounded.
    """
    denominator = mean_b**2 - t**2 * se2_b
    if denominator <= 0:
        return None
    discriminant = mean_a**2 * se2_b + mean_b**2 * se2_a - t**2 * se2_a * se2_b
    root = t * math.sqrt(max(discriminant, 0.0))
    low = (mean_a * mean_b - root) / denominator
    high = (mean_a * mean_b + root) / denominator
    return low, high


def ratio_of_means(
    variant: Sequence[float], base: Sequence[float], alpha: float = 0.05
) -> RatioSummary:
    """Ratio of mean(variant) to mean(base), e.g. Tc or Ec of the paper's opt equation.

    Interval: Fieller's theorem for two independent samples (exact for normal means, unlike
    the delta method it stays right when the base is noisy), with the t quantile at the
    Welch–Satterthwaite degrees of freedom of a − ρ̂b at the estimated ratio (the unequal-
    variance form of R mratios::ttestratio, after Tamhane & Logan 2004).
    p-value: Welch's unequal-variance t-test of mean(variant) = mean(base).
    """
    a, b = _checked(variant, "variant"), _checked(base, "base")
    mean_a, var_a = _mean_var(a)
    mean_b, var_b = _mean_var(b)
    if mean_b == 0:
        raise ValueError("ratio_of_means: base mean is 0")
    ratio = mean_a / mean_b
    if var_a is None or var_b is None:
        return RatioSummary(ratio, None, None, None, False)
    se2_a, se2_b = var_a / len(a), var_b / len(b)
    if se2_a == 0 and se2_b == 0:
        interval: tuple[float, float] | None = (ratio, ratio)
    else:
        # df of the pivot a − ρ̂b, whose variance is s_a² + ρ̂² s_b².
        part_a, part_b = se2_a, ratio**2 * se2_b
        df = (part_a + part_b) ** 2 / (part_a**2 / (len(a) - 1) + part_b**2 / (len(b) - 1))
        t = float(scipy_stats.t.ppf(1 - alpha / 2, df))
        interval = fieller_interval(mean_a, se2_a, mean_b, se2_b, t)
    p_value = welch_p_value(a, b)
    low, high = interval if interval is not None else (None, None)
    excludes_one = low is not None and high is not None and not (low <= 1.0 <= high)
    significant = p_value is not None and p_value < alpha and excludes_one
    return RatioSummary(ratio, low, high, p_value, significant)


@dataclass(frozen=True)
class PairedRatio:
    """variant/base from n pairs: exp(mean of ln(variant_i/base_i)) with a t interval.

    ``ci95_low``/``ci95_high`` and ``p_value`` are None with fewer than two pairs (no spread).
    ``significant``: the interval excludes 1 (the same as the paired t-test's p < alpha).
    """

    ratio: float
    ci95_low: float | None
    ci95_high: float | None
    p_value: float | None
    significant: bool
    pairs: int
    log_ratio_std: float | None  # spread of the per-pair log ratios: the noise the pairing left

    def to_dict(self) -> dict[str, float | bool | int | None]:
        return asdict(self)


def paired_ratio(variant: Sequence[float], base: Sequence[float], alpha: float = 0.05) -> PairedRatio:
    """Ratio of a variant to its base from paired measurements (pair i: the two arms measured
    next to each other in one process).

    Choice (named, after Georges et al. 2007 and pyperf's compare_to): each pair gives
    d_i = ln(variant_i / base_i); the ratio is exp(mean d), the geometric mean of the per-pair
    ratios, and its interval exp(mean d ± t_{1−alpha/2, n−1} · s_d/√n) — the paired t interval on
    the log scale. Why logs: slowness of the machine multiplies both arms of a pair, so it
    cancels in their ratio; ln makes ratios symmetric (A/B and B/A give the same |d|) and the
    interval stays positive. Why pairs, not the ratio of two means: drift between pairs (other
    processes, clocks, thermals) is in both arms and cancels instead of widening or biasing the
    interval. The geometric mean differs from mean(variant)/mean(base) only at the second order
    of the spread. p-value: the paired t-test of mean d = 0 (scipy's ttest_rel on the logs).
    """
    v, b = _checked(variant, "variant"), _checked(base, "base")
    if len(v) != len(b):
        raise ValueError(f"paired_ratio: {len(v)} variant values but {len(b)} base values; pairs must match")
    if min(v + b) <= 0:
        raise ValueError("paired_ratio: times and energies must be positive to take a ratio")
    d = [math.log(x) - math.log(y) for x, y in zip(v, b)]
    n = len(d)
    mean, var = _mean_var(d)
    if var is None:
        return PairedRatio(math.exp(mean), None, None, None, False, n, None)
    std = math.sqrt(var)
    if std == 0:
        # No spread: every pair gave the same ratio (a sure difference unless it is exactly 1).
        p_value = 1.0 if mean == 0 else 0.0
        return PairedRatio(math.exp(mean), math.exp(mean), math.exp(mean), p_value, mean != 0, n, 0.0)
    sem = std / math.sqrt(n)
    t = float(scipy_stats.t.ppf(1 - alpha / 2, n - 1))
    low, high = math.exp(mean - t * sem), math.exp(mean + t * sem)
    p_value = float(2 * scipy_stats.t.sf(abs(mean / sem), n - 1))
    return PairedRatio(math.exp(mean), low, high, p_value, not (low <= 1.0 <= high), n, std)
