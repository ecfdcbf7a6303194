"""Markdown for Dagster metadata: the opt-score table, and PNG charts inlined (the charts
themselves are drawn with altair: altair_charts.py)."""

import base64
import math
from pathlib import Path

import polars as pl

from llmopt_assets.scoring.table import model_verdicts


def format_value(value: object, digits: int = 3) -> str:
    """A table cell: missing (None, NaN) is n/a, never 0; floats to `digits` decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(table: pl.DataFrame) -> str:
    """The columns a reader needs, missing values shown as n/a (never 0), then per model what
    the numbers cannot be trusted for (a failed or missing A/A control, energy that mirrors time)."""
    columns = ["model", "technique", "perplexity", "pc", "tc", "tc_significant", "ec", "ec_significant",
               "opt_balanced", "opt_energy", "opt_runtime", "energy_method", "control"]
    present = [c for c in columns if c in table.columns]
    lines = ["| " + " | ".join(present) + " |", "|" + "---|" * len(present)]
    for row in table.iter_rows(named=True):
        lines.append("| " + " | ".join(format_value(row.get(c)) for c in present) + " |")
    models = table["model"].unique(maintain_order=True).to_list() if "model" in table.columns else []
    notes = [f"- **{model}**: {verdict}" for model in models for verdict in model_verdicts(table, model)]
    return "\n".join(lines + ([""] + notes if notes else []))


# (column, type, description) of the table a reader sees: ratios rounded to 3 decimals, CIs as
# "[low, high]", units in the descriptions. Missing stays missing (None), never 0.
DISPLAY_COLUMNS = [
    ("model", "string", "model slug"),
    ("technique", "string", "compression recipe (partition key)"),
    ("perplexity", "float", "WikiText-2 perplexity (mean over repetitions)"),
    ("Pc", "float", "perplexity / base perplexity (> 1: quality lost)"),
    ("Tc", "float", "variant seconds / base seconds, paired and interleaved (comparison_run)"),
    ("Tc 95% CI", "string", "95% CI of Tc over the pairs"),
    ("Tc differs", "bool", "p < 0.05: time differs from the base"),
    ("Ec", "float", "variant joules / base joules, paired and interleaved"),
    ("Ec 95% CI", "string", "95% CI of Ec over the pairs"),
    ("Ec differs", "bool", "p < 0.05: energy differs from the base"),
    ("opt balanced", "float", "Pc^1.5·(.5·Tc + .5·Ec), lower is better"),
    ("opt energy", "float", "Pc^1.5·(.1·Tc + .9·Ec)"),
    ("opt runtime", "float", "Pc^1.5·(.9·Tc + .1·Ec)"),
    ("seconds", "float", "variant wall seconds per repetition, mean (s)"),
    ("joules", "float", "variant energy per repetition, mean (J)"),
    ("pairs", "int", "base/variant pairs timed"),
    ("A/A control", "string", "the base against a copy of itself: passed, failed or missing"),
    ("energy method", "string", "how energy was obtained (counter, sampled power, estimate)"),
    # A count, the reasons listed in the `flags` entry beside the table: their text in a cell
    # (a few hundred characters) made each row a screen tall in the UI's table.
    ("flags", "int", "how many reasons a comparison may mislead, listed in the flags entry"),
]


def _flag_list(row: dict) -> list[str]:
    return [f for f in (row.get("flags") or "").split("; ") if f]


def flags_markdown(table: pl.DataFrame) -> str:
    """Per variant, the reasons its comparison may mislead, one bullet each."""
    lines = []
    for row in table.iter_rows(named=True):
        flags = _flag_list(row)
        if flags:
            lines.append(f"**{row['model']} {row['technique']}**")
            lines.extend(f"- {flag}" for flag in flags)
            lines.append("")
    return "\n".join(lines) or "no flags"


def _rounded(value: object, digits: int) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)


def _interval(low: object, high: object) -> str | None:
    if low is None or high is None:
        return None  # an unbounded or undefined interval is not a number
    return f"[{low:.3f}, {high:.3f}]"


def display_rows(table: pl.DataFrame) -> list[dict]:
    """The opt-score table as a reader sees it, one dict per variant keyed by DISPLAY_COLUMNS."""
    rows = []
    for row in table.iter_rows(named=True):
        rows.append({
            "model": row["model"],
            "technique": row["technique"],
            "perplexity": _rounded(row.get("perplexity"), 2),
            "Pc": _rounded(row.get("pc"), 3),
            "Tc": _rounded(row.get("tc"), 3),
            "Tc 95% CI": _interval(row.get("tc_ci95_low"), row.get("tc_ci95_high")),
            "Tc differs": row.get("tc_significant"),
            "Ec": _rounded(row.get("ec"), 3),
            "Ec 95% CI": _interval(row.get("ec_ci95_low"), row.get("ec_ci95_high")),
            "Ec differs": row.get("ec_significant"),
            "opt balanced": _rounded(row.get("opt_balanced"), 3),
            "opt energy": _rounded(row.get("opt_energy"), 3),
            "opt runtime": _rounded(row.get("opt_runtime"), 3),
            "seconds": _rounded(row.get("seconds_mean"), 3),
            "joules": _rounded(row.get("joules_mean"), 2),
            "pairs": row.get("pairs"),
            "A/A control": row.get("control"),
            "energy method": row.get("energy_method"),
            "flags": len(_flag_list(row)),
        })
    return rows


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def png_markdown(path: Path) -> str:
    """A PNG inlined for Dagster's markdown metadata (the UI renders images, not Vega)."""
    return f"![{path.stem}]({png_data_uri(path)})"
