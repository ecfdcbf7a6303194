"""The opt-score table: per variant, quality / time / energy change ratios against the same
model's base, with confidence intervals, and Eq. 1 for each preset.

Pc comes from the perplexity runs (measured once per variant: the evaluation is deterministic).
Tc and Ec come only from the paired comparisons (`measure.comparison`): base and variant timed
and metered alternately in one process, the ratio and its interval from the pairs
(`measure.stats.paired_ratio`). The comparison of the base with a second copy of itself is the
A/A control: its interval must cover 1, or the machine was too noisy for every comparison of
that model.
"""

import math

import polars as pl

from llmopt_assets.measure.stats import PairedRatio, paired_ratio, summarize
from llmopt_assets.scoring.opt import PRESETS, QualityScore, opt_score, quality_penalty
from llmopt_assets.techniques.recipe import BASE

# Bump with any change to the score table (opt_scores):
# Dagster then marks what it made stale.
CODE_VERSION = "3"

CONTROL_FAILED = "control failed: the machine is too noisy for this comparison"
NO_CONTROL = (
    "no A/A control: the base was not compared with a second copy of itself "
    "(comparison_run of technique base), so the machine's noise is unchecked"
)
ENERGY_MIRRORS_TIME = "energy mirrors time: the energy preset is the runtime preset in disguise"
# Every estimate our meters make (CPU-seconds × W per core, carbontracker's constant power × wall
# time, codecarbon's load model × time) is time times a power model: only these methods measure.
MEASURED_ENERGY_METHODS = ("counter", "sampled-power")


def identical_flag(technique: str, identical_to: str) -> str:
    """The flag of a row whose weights are another variant's (a head pruning that removed none)."""
    return (f"identical to {identical_to}: no head met the head-pruning criterion, none was removed; "
            f"{technique} is {identical_to} measured again, not a distinct technique")


def _identical_to(quality: pl.DataFrame) -> str | None:
    """The variant a perplexity run's weights equal, None when distinct (or rows older than the column)."""
    if "identical_to" not in quality.columns:
        return None
    named = [v for v in quality["identical_to"].to_list() if v]
    return named[0] if named else None


def _floats(values: list) -> list[float] | None:
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return None  # a missing measurement stays missing
    return [float(v) for v in values]


def _arm(comparison: pl.DataFrame, arm: str) -> pl.DataFrame:
    return comparison.filter(pl.col("arm") == arm).sort("pair")


def paired_ratios(comparison: pl.DataFrame) -> tuple[PairedRatio | None, PairedRatio | None]:
    """Tc and Ec of one comparison's rows (one per pair and arm); Ec None without energy."""
    base, variant = _arm(comparison, "base"), _arm(comparison, "variant")
    if base["pair"].to_list() != variant["pair"].to_list():
        raise ValueError(
            f"comparison of {comparison['technique'][0]!r}: the base and variant arms hold different "
            f"pairs ({base['pair'].to_list()} vs {variant['pair'].to_list()})"
        )
    if base.height < 2:
        return None, None
    time_ratio = paired_ratio(variant["seconds"].to_list(), base["seconds"].to_list())
    base_joules, variant_joules = _floats(base["joules"].to_list()), _floats(variant["joules"].to_list())
    energy_ratio = paired_ratio(variant_joules, base_joules) if base_joules and variant_joules else None
    return time_ratio, energy_ratio


def _covers_one(ratio: PairedRatio | None) -> bool:
    return ratio is not None and ratio.ci95_low is not None and ratio.ci95_low <= 1.0 <= ratio.ci95_high


def control_status(control: pl.DataFrame) -> str:
    """'passed', 'failed' or 'missing': the A/A comparison's Tc (and Ec, if metered) cover 1."""
    if control.height == 0:
        return "missing"
    time_ratio, energy_ratio = paired_ratios(control)
    if time_ratio is None:
        return "missing"
    energy_ok = energy_ratio is None or _covers_one(energy_ratio)
    return "passed" if _covers_one(time_ratio) and energy_ok else "failed"


def energy_informative(comparison: pl.DataFrame) -> bool | None:
    """False when every energy figure is an estimate derived from time; None without energy."""
    methods = {m for m, j in zip(comparison["energy_method"].to_list(), comparison["joules"].to_list()) if j is not None}
    if not methods:
        return None
    return bool(methods & set(MEASURED_ENERGY_METHODS))


def comparison_flags(comparison: pl.DataFrame) -> list[str]:
    """Reasons a paired comparison should not be taken at face value."""
    flags = []
    methods = set(comparison["energy_method"].to_list())
    if len(methods) > 1:
        flags.append(f"energy methods mixed in one comparison: {sorted(methods)}")
    if any(comparison["energy_is_estimate"].to_list()):
        flags.append("energy is an estimate, not a measured counter")
    if energy_informative(comparison) is False:
        flags.append(ENERGY_MIRRORS_TIME)
    if not all(comparison["warmup_stable"].to_list()):
        flags.append("warm-up stopped at its cap before the timing was stable")
    if not all(comparison["reached_min_repetition_seconds"].to_list()):
        flags.append("repetitions shorter than the minimum: the work is too small to time well")
    flags.extend(sorted({f for f in comparison["energy_flags"].to_list() if f}))
    flags.extend(concurrent_load_flag(comparison))
    return flags


def concurrent_load_flag(rows: pl.DataFrame) -> list[str]:
    """One flag when other processes loaded the machine during some of these repetitions."""
    if "interference_flags" not in rows.columns:
        return []
    loaded = [c for c, f in zip(rows["other_process_cores"].to_list(), rows["interference_flags"].to_list()) if f]
    if not loaded:
        return []
    return [f"measured under concurrent load in {len(loaded)} of {rows.height} repetitions (other processes "
            f"up to {max(loaded):.2f} cores): time and energy are not the variant's alone"]


def _time_energy_columns(comparison: pl.DataFrame) -> dict:
    """Tc, Ec with intervals, and the variant arm's own seconds and joules per repetition."""
    time_ratio, energy_ratio = paired_ratios(comparison)
    variant = _arm(comparison, "variant")
    seconds = summarize(variant["seconds"].to_list())
    joules_values = _floats(variant["joules"].to_list())
    joules = summarize(joules_values) if joules_values else None
    columns: dict = {
        "pairs": variant.height,
        "tokens_per_repetition": int(variant["tokens_per_repetition"][0]),
        "seconds_mean": seconds.mean,
        "seconds_std": seconds.std,
        "seconds_ci95_low": seconds.ci95_low,
        "seconds_ci95_high": seconds.ci95_high,
        "seconds_cv": seconds.cv,
        "joules_mean": joules.mean if joules else None,
        "joules_std": joules.std if joules else None,
        "joules_ci95_low": joules.ci95_low if joules else None,
        "joules_ci95_high": joules.ci95_high if joules else None,
        "energy_method": ",".join(sorted(set(comparison["energy_method"].to_list()))),
        "energy_meter": ",".join(sorted(set(comparison["energy_meter"].to_list()))),
        "energy_informative": energy_informative(comparison),
    }
    for prefix, ratio in (("tc", time_ratio), ("ec", energy_ratio)):
        if ratio is not None:
            columns.update({
                prefix: ratio.ratio,
                f"{prefix}_ci95_low": ratio.ci95_low,
                f"{prefix}_ci95_high": ratio.ci95_high,
                f"{prefix}_p_value": ratio.p_value,
                f"{prefix}_significant": ratio.significant,
            })
    return columns


def lineage_flags(quality: pl.DataFrame, base_quality: pl.DataFrame, comparison: pl.DataFrame) -> list[str]:
    """The perplexities and the comparison must name the same weights and protocol."""
    flags = []
    if base_quality.height and set(quality["protocol"].to_list()) != set(base_quality["protocol"].to_list()):
        flags.append("perplexity protocol differs from the base run")
    if comparison.height and quality.height:
        if set(comparison["fingerprint"].to_list()) != set(quality["fingerprint"].to_list()):
            flags.append("time/energy were compared on other weights than the perplexity's: rematerialize comparison_run")
        if base_quality.height and set(comparison["base_fingerprint"].to_list()) != set(base_quality["fingerprint"].to_list()):
            flags.append("time/energy were compared against another base than the perplexity's: rematerialize comparison_run")
    return flags


def _split(measurements: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    if "measurement" not in measurements.columns:
        raise ValueError(
            "the measurements table has no 'measurement' column: rows must say whether they are a "
            "perplexity run or a paired comparison (rematerialize perplexity_run and comparison_run)"
        )
    kind = pl.col("measurement")
    return measurements.filter(kind == "perplexity"), measurements.filter(kind == "comparison")


def opt_table(measurements: pl.DataFrame) -> pl.DataFrame:
    """One row per (model, technique) with Pc, Tc, Ec (and CIs), opt for every preset, the A/A
    control's verdict (`control`, `control_failed`), whether energy says more than time, and
    `identical_to`: the variant whose weights this row's are (a head pruning that removed no
    head), flagged, else None."""
    quality, comparisons = _split(measurements)
    keys = pl.concat([quality.select("model", "technique"), comparisons.select("model", "technique")]).unique(
        maintain_order=True
    )
    of = lambda frame, model, technique: frame.filter(  # noqa: E731
        (pl.col("model") == model) & (pl.col("technique") == technique)
    )
    controls = {
        model: control_status(of(comparisons, model, BASE)) for model in keys["model"].unique(maintain_order=True)
    }
    rows = []
    for model, technique in keys.iter_rows():
        variant_quality, base_quality = of(quality, model, technique), of(quality, model, BASE)
        comparison = of(comparisons, model, technique)
        row: dict = {"model": model, "technique": technique}
        flags: list[str] = []
        perplexity = variant_quality["perplexity"].mean() if variant_quality.height else None
        base_perplexity = base_quality["perplexity"].mean() if base_quality.height else None
        row["perplexity"] = perplexity
        row["identical_to"] = _identical_to(variant_quality)
        if row["identical_to"]:
            flags.append(identical_flag(technique, row["identical_to"]))
        row["fingerprint"] = (variant_quality if variant_quality.height else comparison)["fingerprint"][0]
        for column in ("weights_bytes", "parameter_count"):  # memory, for the decision report
            if column in variant_quality.columns and variant_quality.height:
                row[column] = variant_quality[column][0]
        if perplexity is None:
            flags.append("no perplexity run for this variant: Pc unavailable")
        elif base_perplexity is None:
            flags.append("no base perplexity for this model: Pc unavailable")
        else:
            row["pc"] = perplexity / base_perplexity
        if comparison.height:
            row.update(_time_energy_columns(comparison))
            flags.extend(comparison_flags(comparison))
        else:
            flags.append("no paired comparison (comparison_run) for this variant: Tc, Ec unavailable")
        row["control"] = controls[model]
        row["control_failed"] = controls[model] != "passed"
        if controls[model] == "failed":
            flags.append(CONTROL_FAILED)
        elif controls[model] == "missing":
            flags.append(NO_CONTROL)
        flags.extend(lineage_flags(variant_quality, base_quality, comparison))
        if "pc" in row and "tc" in row:
            penalty = quality_penalty([QualityScore(base_perplexity, perplexity)])
            for preset, (alpha, beta) in PRESETS.items():
                # No energy ratio -> no opt: a missing energy is never taken as zero.
                row[f"opt_{preset}"] = opt_score(penalty, row["tc"], row["ec"], alpha, beta) if "ec" in row else None
        row["flags"] = "; ".join(flags)
        rows.append(row)
    table = pl.DataFrame(rows, infer_schema_length=None)
    return table.sort(["model", "opt_balanced"], nulls_last=True) if "opt_balanced" in table.columns else table


def model_verdicts(table: pl.DataFrame, model: str) -> list[str]:
    """What a chart or report of one model must say before any number: the A/A control's
    verdict, and whether the energy preset says anything the runtime preset does not."""
    rows = table.filter(pl.col("model") == model)
    control = rows["control"][0] if rows.height and "control" in rows.columns else "missing"
    verdicts = {"failed": [CONTROL_FAILED], "missing": [NO_CONTROL]}.get(control, [])
    informative = [v for v in rows["energy_informative"].to_list() if v is not None] if "energy_informative" in rows.columns else []
    if informative and not any(informative):
        verdicts.append(ENERGY_MIRRORS_TIME)
    return verdicts
