"""The multi-measurement quality term (paper §3.4.1): the perplexity ratio and, where the
benchmark round ran on both the variant and its base, one Pc_n per benchmark; the penalty that
multiplies the cost is the mean of their Pc_n^1.5.

The opt table keeps both: `quality_penalty_perplexity` (Pc^1.5, always) and
`quality_penalty_combined` (None where no benchmark was run); `quality_basis` says which one the
`opt_<preset>` columns use, and `opt_<preset>_perplexity` keeps the perplexity-only opt.

A benchmark enters the combined term only where it is informative about this model: where the
base's score is distinguishable from chance (INFORMATIVE_RULE). A smoke round of 4 items per task
cannot tell a 135M model from a coin; a ratio of two such scores is noise, and letting it flag a
variant "below chance" (no opt) would knock the variant out of the ranking on noise alone.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from llmopt_assets.scoring.opt import (
    PRESETS,
    QUALITY_EXPONENT,
    BelowChanceFloor,
    QualityScore,
    opt_score,
    quality_ratio,
)

# Bump when the quality term's arithmetic changes: opt_scores goes stale.
CODE_VERSION = "2"
BASE = "base"
PERPLEXITY_BASIS = "perplexity"
COMBINED_BASIS = "perplexity+benchmarks"
# One-sided 95% normal quantile: the base must beat chance at the 5% level to be informative.
INFORMATIVE_Z = 1.6448536269514722
INFORMATIVE_RULE = (
    "a benchmark enters the combined Pc only where the base is above chance: S_base − x > z·se, "
    "z = 1.645 (one-sided 95%); se = sqrt(x(1−x)/n), the binomial standard error of n chance "
    "guesses, for a count of correct items; the base's lm-eval stderr for a continuous score (mc2)"
)


@dataclass(frozen=True)
class BenchmarkPair:
    """One benchmark's base and variant scores on the same items, with what the informativeness
    test needs: the item count, whether the score counts correct items, the base's stderr."""

    score: QualityScore
    items: int | None
    discrete: bool
    base_stderr: float | None


def base_above_chance(pair: BenchmarkPair) -> tuple[bool, str]:
    """(informative, why) by INFORMATIVE_RULE. For a count of correct items the standard error is
    the one under the null hypothesis (chance guessing), so it does not collapse to 0 where a few
    items happen to be all right or all wrong; for items with differing choice counts
    sqrt(x̄(1−x̄)/n) is the larger (conservative) one, mean of p(1−p) ≤ x̄(1−x̄)."""
    score, n = pair.score, pair.items
    if not n or n <= 0:
        return False, "uninformative: no item count to test the base against chance"
    if pair.discrete:
        se = math.sqrt(score.chance * (1 - score.chance) / n)
        how = "binomial se at chance"
    elif pair.base_stderr is not None and math.isfinite(pair.base_stderr):
        se, how = pair.base_stderr, "lm-eval se"
    else:
        return False, f"uninformative: no stderr for the base's continuous score (n={n})"
    margin, threshold = score.base - score.chance, INFORMATIVE_Z * se
    numbers = (f"n={n}: S_base {score.base:.4f} − chance {score.chance:.4f} = {margin:.4f} "
               f"{'>' if margin > threshold else '≤'} 1.645 × {se:.4f} ({how}) = {threshold:.4f}")
    if margin > threshold:
        return True, f"informative ({numbers})"
    return False, f"uninformative: base not above chance ({numbers})"


def benchmark_pairs(base: pl.DataFrame, variant: pl.DataFrame) -> tuple[list[BenchmarkPair], list[str]]:
    """One pair of higher-is-better scores per benchmark scored on the same items for the base and
    the variant, and why any other benchmark was left out."""
    scores, flags = [], []
    base_by_name = {row["benchmark"]: row for row in base.iter_rows(named=True)}
    for row in variant.sort("benchmark").iter_rows(named=True):
        name = row["benchmark"]
        reference = base_by_name.get(name)
        if reference is None:
            flags.append(f"{name}: no base score for this model, left out of the quality term")
        elif reference["task_hash"] != row["task_hash"]:
            flags.append(f"{name}: scored on other items or prompts than the base (limit, source or data differ), left out")
        else:
            score = QualityScore(
                base=reference["value"], variant=row["value"], higher_is_better=True,
                chance=reference["chance"], name=name,
            )
            scores.append(BenchmarkPair(
                score, items=reference.get("items"), discrete=bool(reference.get("discrete", True)),
                base_stderr=reference.get("stderr"),
            ))
    return scores, flags


def _opt_columns(row: dict, penalty: float | None) -> dict:
    tc, ec = row.get("tc"), row.get("ec")
    usable = penalty is not None and tc is not None and ec is not None and not (math.isnan(tc) or math.isnan(ec))
    return {
        f"opt_{preset}": opt_score(penalty, tc, ec, alpha, beta) if usable else None
        for preset, (alpha, beta) in PRESETS.items()
    }


def combined_quality(pc: float | None, benchmarks: Sequence[BenchmarkPair]) -> dict:
    """Per-benchmark Pc_n, both penalties and the basis. A benchmark whose base is not above chance
    (INFORMATIVE_RULE) is shown, marked uninformative and left out; among the informative ones a
    variant at or below 0.8·chance gets a flag and no opt (never a complex number or a division by
    zero). With no informative benchmark the basis stays perplexity and says why."""
    result: dict = {"quality_penalty_perplexity": pc**QUALITY_EXPONENT if pc is not None else None}
    flags: list[str] = []
    ratios: list[float] = [pc] if pc is not None else []
    used: list[str] = []
    uninformative: list[str] = []
    below_floor = False
    for pair in benchmarks:
        score = pair.score
        informative, why = base_above_chance(pair)
        result[f"pc_{score.name}"] = None
        if not informative:
            uninformative.append(score.name)
            flags.append(f"{score.name}: {why}, left out of the quality term")
            continue
        try:
            ratio = quality_ratio(score)
        except BelowChanceFloor as error:
            flags.append(str(error))
            below_floor = True
            continue
        result[f"pc_{score.name}"] = ratio
        ratios.append(ratio)
        used.append(score.name)
    result["quality_benchmarks_used"] = ", ".join(used)
    result["quality_benchmarks_uninformative"] = ", ".join(uninformative)
    if not benchmarks:
        result.update(quality_basis=PERPLEXITY_BASIS, quality_penalty_combined=None)
        result["quality_penalty"] = result["quality_penalty_perplexity"]
    elif below_floor:
        result.update(quality_basis=f"{COMBINED_BASIS} (below the chance floor: no opt)", quality_penalty_combined=None)
        result["quality_penalty"] = None
    elif not used:
        result.update(
            quality_basis=f"{PERPLEXITY_BASIS} (no informative benchmark: base not above chance on "
            f"{', '.join(uninformative)})",
            quality_penalty_combined=None,
        )
        result["quality_penalty"] = result["quality_penalty_perplexity"]
    elif pc is None:
        result.update(quality_basis=f"{COMBINED_BASIS} (no perplexity ratio: no opt)", quality_penalty_combined=None)
        result["quality_penalty"] = None
    else:
        combined = sum(r**QUALITY_EXPONENT for r in ratios) / len(ratios)
        result.update(quality_basis=COMBINED_BASIS, quality_penalty_combined=combined, quality_penalty=combined)
    result["quality_flags"] = flags
    return result


def apply_benchmark_quality(table: pl.DataFrame, benchmarks: pl.DataFrame | None) -> pl.DataFrame:
    """The opt table with the quality term widened to the benchmark round where it ran.

    `table` is the opt table (model, technique, pc, tc, ec, opt_<preset>, flags); `benchmarks`
    the benchmark_run rows (model, technique, benchmark, value, chance, task_hash), or None."""
    rows = []
    for row in table.iter_rows(named=True):
        model, technique = row["model"], row["technique"]
        scores: list[BenchmarkPair] = []
        pair_flags: list[str] = []
        if benchmarks is not None and benchmarks.height and technique != BASE:
            of_model = benchmarks.filter(pl.col("model") == model)
            variant = of_model.filter(pl.col("technique") == technique)
            if variant.height:
                scores, pair_flags = benchmark_pairs(of_model.filter(pl.col("technique") == BASE), variant)
        pc = row.get("pc")
        quality = combined_quality(pc if pc is not None and not math.isnan(pc) else None, scores)
        flags = [f for f in (row.get("flags") or "").split("; ") if f] + pair_flags + quality.pop("quality_flags")
        out = dict(row)
        for preset in PRESETS:
            out[f"opt_{preset}_perplexity"] = row.get(f"opt_{preset}")
        out.update(quality)
        out.update(_opt_columns(row, quality["quality_penalty"]))
        out["flags"] = "; ".join(flags)
        rows.append(out)
    result = pl.DataFrame(rows, infer_schema_length=None)
    return result.sort(["model", "opt_balanced"], nulls_last=True) if result.height else result
