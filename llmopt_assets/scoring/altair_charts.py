"""Altair charts of the trade-offs, rendered offline with vl-convert: PNG for Dagster's metadata
pop-up and the report (the UI renders no Vega), and a self-contained HTML (vega inlined, no CDN).

- opt per technique per preset (the paper's Figs 2-4), with the propagated 95% interval;
- quality change vs energy change with CIs and the Pareto front;
- opt across models (the paper's Fig 5), measured rows beside published ones;
- the spread of time and energy over repetitions (the paper never showed it).
Text never sits on the plot area (technique names are axis bands or legend entries), so
labels cannot overlap however close the points are.
"""

from __future__ import annotations

import html
from pathlib import Path

import altair as alt
import polars as pl
import vl_convert as vlc

from llmopt_assets.scoring.decision import ranks, pareto_front
from llmopt_assets.scoring.opt import PRESETS
from llmopt_assets.scoring.table import model_verdicts

# Bump with any change to the charts (trade_off_charts):
# Dagster then marks what it made stale.
CODE_VERSION = "2"

# Dagster's metadata pop-up grows with its image (20 px each side) and scrolls with the page
# when taller than the window (measured in chromium 156, Dagster 1.13). A PNG within these
# bounds opens whole, Close button included, in a 1280 × 900 browser window; each chart in the
# pop-up stays within them up to the 38 techniques of the recipe rules (test_scoring_table).
POPUP_MAX_WIDTH = 740
POPUP_MAX_HEIGHT = 700
PANEL_WIDTH = 380
BAR_STEP = 9  # px per preset bar, fewer when many techniques would make the chart too tall
OPT_PLOT_MAX_HEIGHT = 520  # the opt bars; titles, axis and legend take the rest of the pop-up
OPT_TITLE = "opt = Pc^1.5·(α·Tc + β·Ec), log scale (lower is better; base = 1)"
TECHNIQUE_COLORS = alt.Scale(scheme="tableau20")


def _empty(message: str) -> alt.Chart:
    return alt.Chart(pl.DataFrame({"text": [message]})).mark_text(size=14).encode(text="text:N").properties(
        width=PANEL_WIDTH, height=60)


def opt_by_preset(table: pl.DataFrame, model: str, subtitle: str = "") -> alt.Chart:
    """Horizontal bars of opt for each preset, best technique (balanced) first, with the opt
    interval propagated from the Tc/Ec CIs where the table has them."""
    frames = [ranks(table.filter(pl.col("model") == model), p).with_columns(preset=pl.lit(p)) for p in PRESETS]
    data = pl.concat(frames)
    if data.height == 0:
        return _empty(f"{model}: no opt scores")
    order = ranks(table.filter(pl.col("model") == model), "balanced")["technique"].to_list()
    order += sorted(set(data["technique"].to_list()) - set(order))
    y = alt.Y("technique:N", sort=order, title=None, axis=alt.Axis(labelLimit=160))
    base = alt.Chart(data)
    # Bars grow from the base (opt = 1): left of the dashed line is better than not compressing.
    bars = base.mark_bar().encode(
        y=y, yOffset=alt.YOffset("preset:N", sort=list(PRESETS)),
        x=alt.X("opt:Q", scale=alt.Scale(type="log", nice=False, padding=16), title=OPT_TITLE), x2=alt.X2(datum=1),
        color=alt.Color("preset:N", sort=list(PRESETS), legend=alt.Legend(orient="bottom", title="preset")),
        tooltip=["technique", "preset", alt.Tooltip("opt:Q", format=".3f"), alt.Tooltip("opt_low:Q", format=".3f"),
                 alt.Tooltip("opt_high:Q", format=".3f")],
    )
    whiskers = base.transform_filter("isValid(datum.opt_low)").mark_rule(color="black").encode(
        y=y, yOffset=alt.YOffset("preset:N", sort=list(PRESETS)), x="opt_low:Q", x2="opt_high:Q")
    one = alt.Chart(pl.DataFrame({"x": [1.0]})).mark_rule(strokeDash=[4, 3], color="gray").encode(x="x:Q")
    bars_count = len(PRESETS) * len(order)
    height = max(80, min(BAR_STEP, OPT_PLOT_MAX_HEIGHT // bars_count) * bars_count)
    return (bars + whiskers + one).properties(
        width=PANEL_WIDTH + 120, height=height,
        title=alt.Title(f"{model}: opt per technique and preset", subtitle=subtitle or alt.Undefined))


def quality_vs_energy(table: pl.DataFrame, model: str, subtitle: str = "") -> alt.Chart:
    """Pc against Ec with the Ec 95% CI, technique by colour; filled marks are on the Pareto front
    over every objective the table has, the line is the front of these two axes."""
    rows = table.filter(pl.col("model") == model)
    needed = {"pc", "ec"}
    if not needed <= set(rows.columns) or rows.drop_nulls(list(needed)).height == 0:
        return _empty(f"{model}: no quality and energy ratios")
    rows = rows.drop_nulls(list(needed))
    full = pareto_front(rows, model)
    flat = pareto_front(rows, model, ("ec", "pc"))
    for column in ("ec_ci95_low", "ec_ci95_high"):
        if column not in rows.columns:
            rows = rows.with_columns(pl.lit(None, pl.Float64).alias(column))
    data = rows.select("technique", "pc", "ec", "ec_ci95_low", "ec_ci95_high").with_columns(
        front=pl.col("technique").is_in(full.front).replace_strict(
            {True: "on the Pareto front", False: "dominated"}))
    objectives = ", ".join(full.objectives)
    # Below the plot, three columns: beside it, 38 techniques made the chart wider than the pop-up.
    color = alt.Color("technique:N", scale=TECHNIQUE_COLORS,
                      legend=alt.Legend(orient="bottom", columns=3, symbolLimit=60, labelLimit=150))
    x = alt.X("ec:Q", scale=alt.Scale(type="log", nice=False, padding=12), title="Ec = energy / base energy (95% CI)")
    y = alt.Y("pc:Q", scale=alt.Scale(type="log", nice=False, padding=12),
              title="Pc = quality ratio (1 = base; lower is better)")
    base = alt.Chart(data)
    points = base.mark_point(size=80, strokeWidth=2).encode(
        x=x, y=y, color=color,
        fill=alt.condition("datum.front == 'on the Pareto front'",
                           alt.Fill("technique:N", scale=TECHNIQUE_COLORS, legend=None), alt.value("white")),
        shape=alt.Shape("front:N", scale=alt.Scale(domain=["on the Pareto front", "dominated"],
                                                   range=["square", "circle"]), legend=None),
        tooltip=["technique", alt.Tooltip("pc:Q", format=".3f"), alt.Tooltip("ec:Q", format=".3f"), "front"],
    )
    whiskers = base.transform_filter("isValid(datum.ec_ci95_low)").mark_rule().encode(
        x="ec_ci95_low:Q", x2="ec_ci95_high:Q", y="pc:Q", color=color)
    front = alt.Chart(data.filter(pl.col("technique").is_in(flat.front)).sort("ec")).mark_line(
        interpolate="step-after", color="gray", strokeDash=[2, 2]).encode(x="ec:Q", y="pc:Q")
    key = f"filled squares: Pareto front over {objectives}; dotted: front of these two axes"
    return (front + whiskers + points).properties(
        width=PANEL_WIDTH, height=300,
        title=alt.Title(f"{model}: quality vs energy", subtitle=[s for s in (subtitle, key) if s]))


def across_models(table: pl.DataFrame, model_order: list[str] | None = None) -> alt.Chart:
    """opt per technique across models, one panel per preset (the paper's Fig 5); a `source`
    column ('measured' / 'published, ...') sets the mark shape so published rows stay apart."""
    frame = table if "source" in table.columns else table.with_columns(source=pl.lit("measured"))
    frames = []
    for preset in PRESETS:
        column = f"opt_{preset}"
        if column in frame.columns:
            frames.append(frame.select("model", "technique", "source", pl.col(column).alias("opt"))
                          .with_columns(preset=pl.lit(preset)))
    data = pl.concat(frames).drop_nulls("opt") if frames else pl.DataFrame()
    if data.height == 0:
        return _empty("no opt scores to compare across models")
    order = model_order or list(dict.fromkeys(data["model"].to_list()))
    x = alt.X("model:N", sort=order, title=None, axis=alt.Axis(labelAngle=-35, labelLimit=120))
    y = alt.Y("opt:Q", scale=alt.Scale(type="log"), title="opt (log; lower is better)")
    color = alt.Color("technique:N", scale=TECHNIQUE_COLORS, legend=alt.Legend(columns=2, symbolLimit=60))
    base = alt.Chart(data)
    lines = base.mark_line(opacity=0.5).encode(x=x, y=y, color=color, detail="source:N")
    points = base.mark_point(size=50, filled=True).encode(
        x=x, y=y, color=color, shape=alt.Shape("source:N", legend=alt.Legend(orient="bottom", labelLimit=400)),
        tooltip=["model", "technique", "source", alt.Tooltip("opt:Q", format=".3f")])
    width = max(90, min(200, 34 * len(order)))
    return (lines + points).properties(width=width, height=220).facet(
        column=alt.Column("preset:N", sort=list(PRESETS), title=None)).properties(
        title="opt across models (one line per technique)")


def repetition_spread(measurements: pl.DataFrame, model: str) -> alt.Chart:
    """Box plots and every repetition of wall time and energy per technique: the spread the
    paper's 30-run totals hide. Rows need model, technique, seconds and (optionally) joules; the
    paired comparisons' rows (an `arm` column: base / variant) show both arms of each technique."""
    rows = measurements.filter(pl.col("model") == model)
    if "measurement" in rows.columns:
        rows = rows.filter(pl.col("measurement") == "comparison")  # the timed and metered rows
    labels = {"seconds": "wall time (s)", "joules": "energy (J)"}
    if "tokens_per_repetition" in rows.columns:
        # Each comparison calibrates its own repetition length: per 1,000 tokens they compare.
        per_k = 1000 / pl.col("tokens_per_repetition")
        rows = rows.with_columns([(pl.col(m).cast(pl.Float64) * per_k).alias(m) for m in labels if m in rows.columns])
        labels = {"seconds": "wall time (s per 1k tokens)", "joules": "energy (J per 1k tokens)"}
    arm = pl.col("arm") if "arm" in rows.columns else pl.lit("measured")
    metrics = [m for m in labels if m in rows.columns and rows[m].drop_nulls().len() > 0]
    if rows.height == 0 or not metrics:
        return _empty(f"{model}: no per-repetition rows")
    data = pl.concat([
        rows.select("technique", arm.alias("arm"), pl.col(m).cast(pl.Float64).alias("value")).drop_nulls()
        .with_columns(metric=pl.lit(labels[m]))
        for m in metrics
    ])
    order = sorted(set(data["technique"].to_list()), key=lambda t: (t != "base", t))
    arms = sorted(set(data["arm"].to_list()))
    y = alt.Y("technique:N", sort=order, title=None, axis=alt.Axis(labelLimit=160))
    offset = alt.YOffset("arm:N", sort=arms)
    x = alt.X("value:Q", scale=alt.Scale(zero=False), title=None, axis=alt.Axis(tickCount=5, labelFlush=True))
    color = alt.Color("arm:N", sort=arms, legend=alt.Legend(orient="bottom", title="arm") if len(arms) > 1 else None)
    base = alt.Chart()
    box = base.mark_boxplot(extent="min-max", size=8, opacity=0.5).encode(x=x, y=y, yOffset=offset, color=color)
    dots = base.mark_tick(color="black", thickness=1, size=8).encode(x=x, y=y, yOffset=offset)
    per_panel = max(260, (PANEL_WIDTH * 2) // len(metrics) - 80)
    return alt.layer(box, dots).properties(width=per_panel, height=max(60, 12 * len(arms) * len(order))).facet(
        column=alt.Column("metric:N", title=None), data=data
    ).resolve_scale(x="independent").properties(title=f"{model}: every repetition (ticks) and their spread")


def _with_verdicts(chart: alt.VConcatChart, table: pl.DataFrame, model: str) -> alt.VConcatChart:
    """A failed or missing A/A control and energy that mirrors time, stated above the chart."""
    verdicts = model_verdicts(table, model)
    if verdicts:
        chart = chart.properties(title=alt.Title(verdicts, color="firebrick", anchor="start"))
    return chart


def trade_off_figure(table: pl.DataFrame, model: str) -> alt.VConcatChart:
    """The two per-model charts stacked, with the model's verdicts above both (the report's file)."""
    both = alt.vconcat(opt_by_preset(table, model), quality_vs_energy(table, model)).resolve_scale(color="independent")
    return _with_verdicts(both, table, model)


def popup_charts(table: pl.DataFrame, model: str) -> dict[str, alt.VConcatChart]:
    """The two per-model charts apart, each with the verdicts: one metadata pop-up each, so that
    each fits it (stacked, they are twice as tall as a window)."""
    return {
        "opt per preset": _with_verdicts(alt.vconcat(opt_by_preset(table, model)), table, model),
        "quality vs energy": _with_verdicts(alt.vconcat(quality_vs_energy(table, model)), table, model),
    }


def trade_off_chart(table: pl.DataFrame, model: str, path: Path) -> Path:
    """`trade_off_figure` as one PNG."""
    return to_png(trade_off_figure(table, model), path)


def to_png(chart: alt.TopLevelMixin, path: Path, scale: float = 1.0) -> Path:
    """Render offline with vl-convert (no browser, no network)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(vlc.vegalite_to_png(chart.to_json(), scale=scale))
    return path


def interactive_page(charts: dict[str, alt.TopLevelMixin], title: str, path: Path) -> Path:
    """One standalone page with every chart live (tooltips): the vega libraries are inlined once
    from vl-convert's bundle, so the page fetches nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bundle = vlc.javascript_bundle().replace("</script", "<\\/script")
    blocks = "\n".join(f'<h3>{html.escape(name)}</h3><div id="chart-{i}"></div>' for i, name in enumerate(charts))
    specs = [chart.to_json().replace("</", "<\\/") for chart in charts.values()]  # never closes the tag
    embeds = "\n".join(f'vegaEmbed("#chart-{i}", {spec}, {{"actions": false}});' for i, spec in enumerate(specs))
    path.write_text(
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<script>{bundle}</script></head><body style='font-family:sans-serif'><h1>{html.escape(title)}</h1>"
        f"{blocks}<script>{embeds}</script></body></html>"
    )
    return path
