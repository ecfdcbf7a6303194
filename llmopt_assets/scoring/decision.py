"""The decision: which technique to use for a model, how sure the data is, and what to pick under
a constraint — computed from the opt-score table (one row per model × technique).

Choices recorded here (the paper ranks by the point value of opt and says nothing of noise):
- **Uncertainty of opt.** opt = Pc^1.5·(α·Tc + β·Ec) is increasing in Tc and Ec, so the interval
  Pc^1.5·(α·[Tc_lo, Tc_hi] + β·[Ec_lo, Ec_hi]) contains every opt the two 95% intervals allow
  (interval arithmetic: conservative, it assumes the worst joint case). Pc has no interval:
  perplexity is deterministic (measured once), and benchmark stderrs are not propagated.
- **Significance of a rank gap.** The best technique is *clearly ahead* of the runner-up when
  their opt intervals do not overlap. Non-overlap of two 95% intervals is a conservative test
  (it implies p < 0.05 and more); "within noise" means this data cannot order the two, not that
  they are equal. Without intervals the gap is "unknown", never "significant".
- **Pareto frontier** over the point estimates of quality change (Pc), time change (Tc), energy
  change (Ec) and memory, all lower-is-better; an objective missing for any row of a model is
  left out for that model, and the answer says which objectives were used.
- **Constraints** are checked per row; a row whose data cannot answer a constraint (no memory
  figure, no benchmark run) does not satisfy it, and the answer counts such rows.
Older tables without CIs, flags, memory or benchmark columns are accepted: what they lack is
reported as unknown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl

from llmopt_assets.scoring.opt import PRESETS, QUALITY_EXPONENT, preset_weights

BASE = "base"
# lm-eval tasks of the paper's second round (§4.4); a score column starts with the task name.
BENCHMARKS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2", "winogrande")
_NOT_A_SCORE = {"stderr", "ci95", "low", "high", "chance", "items", "n", "pc", "limit", "version", "seconds", "drop"}
# Memory of the variant as loaded, in bytes (first present wins), then a parameter count.
MEMORY_BYTES_COLUMNS = ("weights_bytes", "memory_bytes", "model_bytes", "bytes_on_disk")
PARAMETER_COLUMNS = ("parameter_count", "parameters")


def _number(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    number = float(value)  # type: ignore[arg-type]
    return None if math.isnan(number) else number


def _column(row: dict, name: str) -> float | None:
    return _number(row.get(name))


def opt_interval(row: dict, preset: str) -> tuple[float | None, float | None]:
    """(low, high) of opt for one table row from its Tc and Ec 95% intervals; (None, None) when
    either interval is missing (the module docstring gives the construction)."""
    alpha, beta = preset_weights(preset)
    pc = _column(row, "pc")
    bounds = [_column(row, c) for c in ("tc_ci95_low", "tc_ci95_high", "ec_ci95_low", "ec_ci95_high")]
    if pc is None or any(b is None for b in bounds):
        return None, None
    tc_low, tc_high, ec_low, ec_high = bounds  # type: ignore[misc]
    penalty = _quality_penalty(row, pc)
    return penalty * (alpha * tc_low + beta * ec_low), penalty * (alpha * tc_high + beta * ec_high)


def _quality_penalty(row: dict, pc: float) -> float:
    # A multi-measurement table (issue 9) stores the mean of Pc_n^1.5 directly: use it when there.
    penalty = _column(row, "quality_penalty")
    return penalty if penalty is not None else pc**QUALITY_EXPONENT


def ranks(table: pl.DataFrame, preset: str) -> pl.DataFrame:
    """Per model, the rows with an opt for `preset`, best first: model, technique, opt, opt_low,
    opt_high, rank (1 = lowest opt; ties broken by technique name so the order is stable)."""
    column = f"opt_{preset}"
    preset_weights(preset)  # refuse an unknown preset with the list of known ones
    rows = []
    for row in table.iter_rows(named=True):
        opt = _column(row, column)
        if opt is None:
            continue
        low, high = opt_interval(row, preset)
        rows.append({"model": row["model"], "technique": row["technique"], "opt": opt, "opt_low": low,
                     "opt_high": high})
    schema = {"model": pl.String, "technique": pl.String, "opt": pl.Float64, "opt_low": pl.Float64,
              "opt_high": pl.Float64}
    frame = pl.DataFrame(rows, schema=schema).sort(["model", "opt", "technique"])
    return frame.with_columns(rank=pl.col("opt").rank("ordinal").over("model").cast(pl.Int64))


def gap_verdict(best: dict, runner_up: dict | None) -> str:
    """'clearly ahead' when the two opt intervals are disjoint, 'within noise' when they overlap,
    'unknown' without intervals, 'no runner-up' when only one technique was scored."""
    if runner_up is None:
        return "no runner-up"
    if best["opt_high"] is None or runner_up["opt_low"] is None:
        return "unknown"
    return "clearly ahead" if best["opt_high"] < runner_up["opt_low"] else "within noise"


def _rows_of(table: pl.DataFrame, model: str) -> list[dict]:
    return table.filter(pl.col("model") == model).to_dicts()


def energy_is_estimated(row: dict) -> bool:
    """True when the energy ratio only restates CPU time (issue 8's `energy_informative`; older
    tables: an estimate method or flag)."""
    informative = row.get("energy_informative")
    if informative is not None:
        return not bool(informative)
    method = str(row.get("energy_method") or "")
    return "estimate" in method or "energy is an estimate" in str(row.get("flags") or "")


def caveats(rows: Iterable[dict], preset: str) -> list[str]:
    """Plain statements of what a recommendation for `preset` rests on beyond clean measurements."""
    rows = list(rows)
    notes: list[str] = []
    # `control` ('passed' / 'failed' / 'missing') says more than `control_failed`, which is also
    # true when no control was run; older tables have neither.
    controls = {str(r["control"]) if r.get("control") is not None else
                ("failed" if r.get("control_failed") else None) for r in rows}
    if "failed" in controls:
        notes.append("the A/A control failed (base vs a copy of itself did not come out equal): "
                     "the machine was too noisy, time and energy differences may be noise")
    elif "missing" in controls:
        notes.append("no A/A control was run (base vs a copy of itself): the machine's noise is unchecked")
    _, beta = preset_weights(preset)
    if beta > 0 and any(energy_is_estimated(r) for r in rows):
        notes.append("energy is estimated from CPU time, not metered: Ec mirrors Tc"
                     + (", so the energy preset is the runtime preset in disguise" if preset == "energy" else ""))
    return notes


@dataclass(frozen=True)
class Recommendation:
    model: str
    preset: str
    best: str | None
    opt: float | None
    opt_low: float | None
    opt_high: float | None
    runner_up: str | None
    runner_up_opt: float | None
    gap: str  # gap_verdict
    # Techniques the data cannot tell apart from the best (intervals overlap the best's).
    within_noise: tuple[str, ...] = ()
    caveats: tuple[str, ...] = ()
    flags: str = ""
    identical_to: str | None = None  # the best's weights are this variant's (no head removed)

    def sentence(self) -> str:
        """One line a reader can act on: what to use, by how much, how sure."""
        if self.best is None:
            return f"{self.preset}: no technique has an opt score for {self.model}"
        interval = (f" [{self.opt_low:.3f}, {self.opt_high:.3f}]"
                    if self.opt_low is not None and self.opt_high is not None else "")
        text = f"{self.preset}: **{self.best}** (opt {self.opt:.3f}{interval})"
        if self.identical_to:
            text += f", identical to {self.identical_to} (no head met the pruning criterion, none removed)"
        if self.gap == "clearly ahead":
            text += f", clearly ahead of {self.runner_up} ({self.runner_up_opt:.3f})"
        elif self.gap == "within noise":
            text += f", not separable from {', '.join(self.within_noise)} at this number of repetitions"
        elif self.gap == "unknown":
            text += f", ahead of {self.runner_up} ({self.runner_up_opt:.3f}) by the point values; no CIs to say how surely"
        if self.best == BASE:
            text += " — no compression pays off under this weighting"
        return text


def recommend(table: pl.DataFrame, model: str, preset: str) -> Recommendation:
    """The best technique for one model and preset, and how surely it beats the runner-up."""
    ranked = ranks(table.filter(pl.col("model") == model), preset).to_dicts()
    model_rows = _rows_of(table, model)
    notes = tuple(caveats(model_rows, preset))
    if not ranked:
        return Recommendation(model, preset, None, None, None, None, None, None, "unknown", caveats=notes)
    best = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    within_noise = tuple(
        r["technique"] for r in ranked[1:]
        if best["opt_high"] is not None and r["opt_low"] is not None and r["opt_low"] <= best["opt_high"]
    )
    best_row = next(r for r in model_rows if r["technique"] == best["technique"])
    return Recommendation(
        model=model, preset=preset, best=best["technique"], opt=best["opt"], opt_low=best["opt_low"],
        opt_high=best["opt_high"], runner_up=runner_up["technique"] if runner_up else None,
        runner_up_opt=runner_up["opt"] if runner_up else None, gap=gap_verdict(best, runner_up),
        within_noise=within_noise, caveats=notes, flags=str(best_row.get("flags") or ""),
        identical_to=best_row.get("identical_to") or None,
    )


def recommendations(table: pl.DataFrame, presets: Iterable[str] = PRESETS) -> list[Recommendation]:
    """Every model × preset of the table."""
    models = sorted(set(table["model"].to_list())) if table.height else []
    return [recommend(table, model, preset) for model in models for preset in presets]


def memory_column(table: pl.DataFrame) -> str | None:
    """The column that measures a variant's memory: bytes if any, else a parameter count."""
    for name in MEMORY_BYTES_COLUMNS + PARAMETER_COLUMNS:
        if name in table.columns:
            return name
    return None


@dataclass(frozen=True)
class ParetoResult:
    objectives: tuple[str, ...]
    # technique -> the techniques that dominate it (empty: on the frontier)
    dominated_by: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def front(self) -> list[str]:
        return sorted(t for t, by in self.dominated_by.items() if not by)


def dominates(a: dict, b: dict, objectives: Iterable[str]) -> bool:
    """a is no worse than b in every objective and better in at least one (all lower-is-better)."""
    objectives = list(objectives)
    return all(a[o] <= b[o] for o in objectives) and any(a[o] < b[o] for o in objectives)


def pareto_front(table: pl.DataFrame, model: str, candidates: Iterable[str] | None = None) -> ParetoResult:
    """The non-dominated techniques of one model over quality, time, energy and memory change
    (or over `candidates`, e.g. ("ec", "pc") for a two-axis chart)."""
    rows = _rows_of(table, model)
    if candidates is None:
        # Quality: the term opt uses (perplexity and benchmarks, §3.4.1) where every row has it.
        quality = "quality_penalty" if rows and all(_column(r, "quality_penalty") is not None for r in rows) else "pc"
        candidates = [quality, "tc", "ec", memory_column(table) or ""]
    objectives = tuple(
        c for c in candidates if c and c in table.columns and rows and all(_column(r, c) is not None for r in rows)
    )
    if not objectives:
        return ParetoResult(objectives, {r["technique"]: () for r in rows})
    points = [{"technique": r["technique"], **{o: _column(r, o) for o in objectives}} for r in rows]
    return ParetoResult(
        objectives,
        {p["technique"]: tuple(q["technique"] for q in points if dominates(q, p, objectives)) for p in points},
    )


@dataclass(frozen=True)
class Constraints:
    """'Best under a constraint' (None = no limit). Benchmark points are on the 0-100 scale of
    an accuracy (a drop from 0.452 to 0.441 is 1.1 points)."""

    max_perplexity_increase_pct: float | None = None
    max_memory_mb: float | None = None
    max_benchmark_drop_points: float | None = None

    def describe(self) -> str:
        parts = []
        if self.max_perplexity_increase_pct is not None:
            parts.append(f"perplexity increase ≤ {self.max_perplexity_increase_pct:g}%")
        if self.max_memory_mb is not None:
            parts.append(f"memory ≤ {self.max_memory_mb:g} MB")
        if self.max_benchmark_drop_points is not None:
            parts.append(f"every benchmark drop ≤ {self.max_benchmark_drop_points:g} points")
        return " and ".join(parts) or "no constraint"


def with_benchmark_scores(table: pl.DataFrame, scores: pl.DataFrame | None) -> pl.DataFrame:
    """The score table with one `benchmark_<name>` column per benchmark from benchmark_run rows
    (model, technique, benchmark, value), so constraints can read score drops in points; the opt
    table itself keeps only the per-benchmark Pc_n."""
    if scores is None or scores.height == 0:
        return table
    wide = (
        scores.select("model", "technique", ("benchmark_" + pl.col("benchmark")).alias("benchmark"), "value")
        .pivot(on="benchmark", index=["model", "technique"], values="value", aggregate_function="mean")
    )
    clashing = [c for c in wide.columns if c in table.columns and c not in ("model", "technique")]
    return table.drop(clashing).join(wide, on=["model", "technique"], how="left")


def benchmark_columns(table: pl.DataFrame) -> list[str]:
    """Score columns of the lm-eval tasks (e.g. `hellaswag`, `arc_challenge_acc_norm`), not their
    stderr, chance level or per-task Pc."""
    columns = []
    for column in table.columns:
        name = column.removeprefix("benchmark_")
        task = next((b for b in BENCHMARKS if name == b or name.startswith(b + "_")), None)
        if task and not set(name[len(task):].split("_")) & _NOT_A_SCORE:
            columns.append(column)
    return columns


def perplexity_increase_pct(row: dict, base: dict | None) -> float | None:
    """(perplexity / base perplexity − 1)·100, from the perplexity columns, else from Pc (the
    perplexity ratio; the benchmark-widened term is `quality_penalty`)."""
    perplexity, base_perplexity = _column(row, "perplexity"), _column(base or {}, "perplexity")
    if perplexity is not None and base_perplexity:
        return (perplexity / base_perplexity - 1) * 100
    pc = _column(row, "pc")
    return None if pc is None else (pc - 1) * 100


def memory_mb(row: dict, column: str | None) -> float | None:
    if column is None or column not in MEMORY_BYTES_COLUMNS:
        return None  # a parameter count is not a size in bytes (precision varies by technique)
    value = _column(row, column)
    return None if value is None else value / 1e6


def benchmark_drop_points(row: dict, base: dict | None, columns: list[str]) -> float | None:
    """The largest drop of any benchmark score against the base, in points; None if any is missing."""
    if not columns or base is None:
        return None
    drops = []
    for column in columns:
        value, reference = _column(row, column), _column(base, column)
        if value is None or reference is None:
            return None
        scale = 1.0 if max(abs(value), abs(reference)) > 1.0 else 100.0  # fractions -> points
        drops.append((reference - value) * scale)
    return max(drops)


@dataclass(frozen=True)
class ConstraintAnswer:
    model: str
    preset: str
    constraints: Constraints
    best: str | None
    satisfying: tuple[str, ...]  # best first, by opt of the preset
    failing: dict[str, str]  # technique -> why it fails
    unknown: dict[str, str]  # technique -> what data is missing

    def sentence(self) -> str:
        head = f"{self.model}, {self.constraints.describe()}, by {self.preset} opt"
        if self.best is None:
            text = f"{head}: **nothing satisfies the constraints**"
            if self.failing:
                technique, why = min(self.failing.items())
                text += f" (e.g. {technique}: {why})"
            if self.unknown:
                text += f" ({len(self.unknown)} variant(s) could not be checked: " + "; ".join(
                    f"{t}: {why}" for t, why in sorted(self.unknown.items())) + ")"
            return text
        text = f"{head}: **{self.best}**"
        others = [t for t in self.satisfying if t != self.best]
        if others:
            text += f" (also satisfying: {', '.join(others)})"
        if self.best == BASE:
            text += " — no compressed variant meets them with a better score than the uncompressed base"
        if self.unknown:
            text += f"; {len(self.unknown)} variant(s) could not be checked ({', '.join(sorted(self.unknown))})"
        return text


def _check(row: dict, base: dict | None, constraints: Constraints, memory: str | None,
           benchmarks: list[str]) -> tuple[list[str], list[str]]:
    """(reasons it fails, data it lacks) for one row."""
    fails: list[str] = []
    missing: list[str] = []
    limits = [
        (constraints.max_perplexity_increase_pct, lambda: perplexity_increase_pct(row, base), "perplexity",
         "%", "no perplexity ratio"),
        (constraints.max_memory_mb, lambda: memory_mb(row, memory), "memory", " MB",
         "no memory size in bytes in the table"),
        (constraints.max_benchmark_drop_points, lambda: benchmark_drop_points(row, base, benchmarks),
         "benchmark drop", " points", "no benchmark scores for it and its base"),
    ]
    for limit, value_of, what, unit, lacking in limits:
        if limit is None:
            continue
        value = value_of()
        if value is None:
            missing.append(lacking)
        elif value > limit:
            fails.append(f"{what} {value:+.1f}{unit} > {limit:g}{unit}" if what == "perplexity"
                         else f"{what} {value:.1f}{unit} > {limit:g}{unit}")
    return fails, missing


def best_under(table: pl.DataFrame, model: str, constraints: Constraints, preset: str = "balanced") -> ConstraintAnswer:
    """The lowest-opt technique of `model` that satisfies every constraint, saying plainly when none
    does and which variants lacked the data to be checked."""
    rows = _rows_of(table, model)
    base = next((r for r in rows if r["technique"] == BASE), None)
    memory, benchmarks = memory_column(table), benchmark_columns(table)
    opt_of = {r["technique"]: r["opt"] for r in ranks(table.filter(pl.col("model") == model), preset).to_dicts()}
    satisfying, failing, unknown = [], {}, {}
    for row in rows:
        technique = row["technique"]
        fails, missing = _check(row, base, constraints, memory, benchmarks)
        if fails:
            failing[technique] = "; ".join(fails)
        elif missing:
            unknown[technique] = "; ".join(missing)
        elif technique not in opt_of:
            unknown[technique] = f"no {preset} opt score"
        else:
            satisfying.append(technique)
    satisfying.sort(key=lambda t: (opt_of[t], t))
    return ConstraintAnswer(model, preset, constraints, satisfying[0] if satisfying else None, tuple(satisfying),
                            failing, unknown)
