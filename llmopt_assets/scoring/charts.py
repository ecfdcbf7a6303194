"""Trade-off charts (PNG) and a markdown rendering of the opt-score table."""

import base64
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: charts are files and UI metadata
import matplotlib.pyplot as plt
import polars as pl

from llmopt_assets.scoring.opt import PRESETS


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(table: pl.DataFrame) -> str:
    """The columns a reader needs, missing values shown as n/a (never 0)."""
    columns = ["model", "technique", "perplexity", "pc", "tc", "ec", "opt_balanced", "opt_energy",
               "opt_runtime", "energy_method"]
    present = [c for c in columns if c in table.columns]
    lines = ["| " + " | ".join(present) + " |", "|" + "---|" * len(present)]
    for row in table.iter_rows(named=True):
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in present) + " |")
    return "\n".join(lines)


def trade_off_chart(table: pl.DataFrame, model: str, path: Path) -> Path:
    """Left: opt per preset (lower is better). Right: perplexity change vs energy change, with the
    95% CI of the energy ratio as error bars."""
    rows = table.filter(pl.col("model") == model)
    if "opt_balanced" in rows.columns:
        rows = rows.filter(pl.col("opt_balanced").is_not_null()).sort("opt_balanced")
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(14, max(4, 0.32 * rows.height + 1.5)))
    techniques = rows["technique"].to_list() if rows.height else []
    for offset, preset in enumerate(PRESETS):
        column = f"opt_{preset}"
        values = rows[column].to_list() if column in rows.columns else []
        positions = [i + (offset - 1) * 0.27 for i in range(len(values))]
        bars.barh(positions, values, height=0.27, label=preset)
    bars.set_yticks(range(len(techniques)), techniques)
    bars.axvline(1.0, color="gray", lw=0.8, ls="--")
    bars.set_xscale("log")  # opt spans orders of magnitude (a broken variant vs a good one)
    bars.invert_yaxis()
    bars.set_xlabel("opt = Pc^1.5 (α·Tc + β·Ec), log scale   (lower is better; base = 1)")
    bars.legend(title="preset")
    if {"ec", "pc"} <= set(rows.columns) and rows.height:
        ec = rows["ec"].to_list()
        pc = rows["pc"].to_list()
        # An unbounded or undefined interval (None) is drawn without a bar, not as zero width.
        low = [e - lo if lo is not None else 0.0 for e, lo in zip(ec, rows["ec_ci95_low"].to_list())]
        high = [hi - e if hi is not None else 0.0 for e, hi in zip(ec, rows["ec_ci95_high"].to_list())]
        scatter.errorbar(ec, pc, xerr=[low, high], fmt="o", capsize=3)
        for name, x, y in zip(techniques, ec, pc):
            scatter.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    method = ",".join(sorted(set(rows["energy_method"].to_list()))) if rows.height else "n/a"
    scatter.set_xlabel(f"Ec = energy / base energy (95% CI; method: {method})")
    scatter.set_ylabel("Pc = perplexity / base perplexity (log scale)")
    scatter.set_yscale("log")
    scatter.axhline(1, color="gray", lw=0.8)
    scatter.axvline(1, color="gray", lw=0.8)
    fig.suptitle(f"{model}: compression trade-offs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def png_markdown(path: Path) -> str:
    """A PNG inlined for Dagster's markdown metadata (the UI renders images, not Vega)."""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f"![{path.stem}](data:image/png;base64,{encoded})"
