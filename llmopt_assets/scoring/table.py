"""The opt-score table: per variant, quality / time / energy change ratios against the same
model's base, with confidence intervals, and Eq. 1 for each preset."""

import json
import math
from datetime import datetime

import polars as pl

from llmopt_assets.measure.stats import ratio_of_means, summarize
from llmopt_assets.scoring.opt import PRESETS, QualityScore, opt_score, quality_penalty

BASE = "base"
MAX_GAP_HOURS = 1.0


def _values(frame: pl.DataFrame, column: str) -> list[float] | None:
    values = frame[column].to_list()
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return None  # a missing measurement stays missing
    return [float(v) for v in values]


def variant_summary(frame: pl.DataFrame) -> dict:
    """Mean, std and 95% CI of time and energy over one variant's repetitions."""
    seconds = summarize(_values(frame, "seconds"))
    joules_values = _values(frame, "joules")
    joules = summarize(joules_values) if joules_values else None
    perplexities = frame["perplexity"].to_list()
    return {
        "repetitions": frame.height,
        "perplexity": sum(perplexities) / len(perplexities),
        "perplexity_spread": max(perplexities) - min(perplexities),
        "seconds_mean": seconds.mean,
        "seconds_std": seconds.std,
        "seconds_ci95_low": seconds.ci95_low,
        "seconds_ci95_high": seconds.ci95_high,
        "seconds_cv": seconds.cv,
        "joules_mean": joules.mean if joules else None,
        "joules_std": joules.std if joules else None,
        "joules_ci95_low": joules.ci95_low if joules else None,
        "joules_ci95_high": joules.ci95_high if joules else None,
        "energy_method": ",".join(sorted(set(frame["energy_method"].to_list()))),
        "energy_meter": ",".join(sorted(set(frame["energy_meter"].to_list()))),
    }


def comparability_flags(variant: pl.DataFrame, base: pl.DataFrame) -> list[str]:
    """Reasons a variant's ratios against its base would mix things that must not be mixed."""
    flags = []
    if set(variant["protocol"].to_list()) != set(base["protocol"].to_list()):
        flags.append("perplexity protocol differs from the base run")
    hardware = {json.loads(h).get("cpu_model") for h in variant["hardware"].to_list() + base["hardware"].to_list()}
    if len(hardware) > 1:
        flags.append("measured on different hardware than the base")
    methods = set(variant["energy_method"].to_list()) | set(base["energy_method"].to_list())
    if len(methods) > 1:
        flags.append(f"energy methods mixed in one comparison: {sorted(methods)}")
    if any(variant["energy_is_estimate"].to_list()):
        flags.append("energy is an estimate, not a measured counter")
    if "measured_at" in variant.columns and "measured_at" in base.columns:
        # The CIs cover noise within a run, not the machine's drift between distant runs.
        times = [datetime.fromisoformat(t) for t in variant["measured_at"].to_list() + base["measured_at"].to_list()]
        gap_hours = (max(times) - min(times)).total_seconds() / 3600
        if gap_hours > MAX_GAP_HOURS:
            flags.append(f"measured {gap_hours:.1f} h apart from the base: drift between runs is not in the CI")
    if "energy_flags" in variant.columns:
        flags.extend(sorted({f for f in variant["energy_flags"].to_list() if f}))
    return flags


def opt_table(measurements: pl.DataFrame) -> pl.DataFrame:
    """One row per (model, technique) with Pc, Tc, Ec (and CIs) and opt for every preset."""
    rows = []
    for (model, technique), variant in measurements.group_by(["model", "technique"], maintain_order=True):
        base = measurements.filter((pl.col("model") == model) & (pl.col("technique") == BASE))
        summary = variant_summary(variant)
        row = {"model": model, "technique": technique, **summary}
        row["fingerprint"] = variant["fingerprint"][0]
        if base.height == 0:
            row["flags"] = "no base measurement for this model: ratios unavailable"
            rows.append(row)
            continue
        base_summary = variant_summary(base)
        pc = summary["perplexity"] / base_summary["perplexity"]
        time_ratio = ratio_of_means(_values(variant, "seconds"), _values(base, "seconds"))
        row.update(
            pc=pc,
            tc=time_ratio.ratio,
            tc_ci95_low=time_ratio.ci95_low,
            tc_ci95_high=time_ratio.ci95_high,
            tc_significant=time_ratio.significant,
        )
        variant_joules, base_joules = _values(variant, "joules"), _values(base, "joules")
        energy_ratio = ratio_of_means(variant_joules, base_joules) if variant_joules and base_joules else None
        if energy_ratio is not None:
            row.update(
                ec=energy_ratio.ratio,
                ec_ci95_low=energy_ratio.ci95_low,
                ec_ci95_high=energy_ratio.ci95_high,
                ec_significant=energy_ratio.significant,
            )
        penalty = quality_penalty([QualityScore(base_summary["perplexity"], summary["perplexity"])])
        for preset, (alpha, beta) in PRESETS.items():
            # No energy ratio -> no opt: a missing energy is never taken as zero.
            row[f"opt_{preset}"] = (
                opt_score(penalty, time_ratio.ratio, energy_ratio.ratio, alpha, beta) if energy_ratio else None
            )
        row["flags"] = "; ".join(comparability_flags(variant, base))
        rows.append(row)
    table = pl.DataFrame(rows, infer_schema_length=None)
    return table.sort(["model", "opt_balanced"], nulls_last=True) if "opt_balanced" in table.columns else table
