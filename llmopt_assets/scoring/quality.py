"""The multi-measurement quality term (paper §3.4.1): the perplexity ratio and, where the
benchmark round ran on both the variant and its base, one Pc_n per benchmark; the penalty that
multiplies the cost is the mean of their Pc_n^1.5.

The opt table keeps both: `quality_penalty_perplexity` (Pc^1.5, always) and
`quality_penalty_combined` (None where no benchmark was run); `quality_basis` says which one the
`opt_<preset>` columns use, and `opt_<preset>_perplexity` keeps the perplexity-only opt.
"""

import math

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
CODE_VERSION = "1"
BASE = "base"
PERPLEXITY_BASIS = "perplexity"
COMBINED_BASIS = "perplexity+benchmarks"


def benchmark_pairs(base: pl.DataFrame, variant: pl.DataFrame) -> tuple[list[QualityScore], list[str]]:
    """One higher-is-better QualityScore per benchmark scored on the same items for the base and
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
            scores.append(
                QualityScore(
                    base=reference["value"], variant=row["value"], higher_is_better=True,
                    chance=reference["chance"], name=name,
                )
            )
    return scores, flags


def _opt_columns(row: dict, penalty: float | None) -> dict:
    tc, ec = row.get("tc"), row.get("ec")
    usable = penalty is not None and tc is not None and ec is not None and not (math.isnan(tc) or math.isnan(ec))
    return {
        f"opt_{preset}": opt_score(penalty, tc, ec, alpha, beta) if usable else None
        for preset, (alpha, beta) in PRESETS.items()
    }


def combined_quality(pc: float | None, benchmark_scores: list[QualityScore]) -> dict:
    """Per-benchmark Pc_n, both penalties and the basis, or a flag where a score sits at or below
    0.8·chance (no opt then, never a complex number or a division by zero)."""
    result: dict = {"quality_penalty_perplexity": pc**QUALITY_EXPONENT if pc is not None else None}
    flags: list[str] = []
    ratios: list[float] = [pc] if pc is not None else []
    below_floor = False
    for score in benchmark_scores:
        try:
            ratio = quality_ratio(score)
        except BelowChanceFloor as error:
            flags.append(str(error))
            result[f"pc_{score.name}"] = None
            below_floor = True
            continue
        result[f"pc_{score.name}"] = ratio
        ratios.append(ratio)
    if not benchmark_scores:
        result.update(quality_basis=PERPLEXITY_BASIS, quality_penalty_combined=None)
        result["quality_penalty"] = result["quality_penalty_perplexity"]
    elif below_floor:
        result.update(quality_basis=f"{COMBINED_BASIS} (below the chance floor: no opt)", quality_penalty_combined=None)
        result["quality_penalty"] = None
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
        scores: list[QualityScore] = []
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
