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


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def png_markdown(path: Path) -> str:
    """A PNG inlined for Dagster's markdown metadata (the UI renders images, not Vega)."""
    return f"![{path.stem}]({png_data_uri(path)})"
