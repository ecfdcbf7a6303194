"""The decision report: markdown and a self-contained HTML (charts embedded as PNG, no network),
written from the opt-score table, the per-repetition measurements and the paper's published
tables.

Layout: a screenshot-sized summary first (per model: what to use for energy, runtime and
balance, and how sure), the charts, the measured results in the paper's table layout (Tables
4-6) with CIs and the measurement method in a footnote, the published rows beside ours, and
where the paper's recommendations do not follow from its own equation.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from llmopt_assets.scoring import altair_charts as charts
from llmopt_assets.scoring.charts import format_value, png_data_uri
from llmopt_assets.scoring.decision import (
    BASE,
    ConstraintAnswer,
    Constraints,
    benchmark_columns,
    best_under,
    caveats,
    memory_column,
    memory_mb,
    pareto_front,
    recommend,
)
from llmopt_assets.scoring.paper_tables import PAPER_TABLES, PUBLISHED, paper_claims_check, paper_scores

# Bump with any change to the report or its charts (decision_report):
# Dagster then marks what it made stale.
CODE_VERSION = "4"

# The summary reads "for energy use …, for runtime …, for balance …" in that order.
SUMMARY_PRESETS = {"energy": "For energy use", "runtime": "For runtime", "balanced": "For balance"}
# A measured model without a published row is shown beside the paper's model of its size class.
CLOSEST_PUBLISHED = "gpt2"


@dataclass
class Section:
    title: str
    # Blocks: str = a paragraph (markdown **bold** allowed), list[str] = bullets,
    # tuple(header, rows) = a table, Path = a chart.
    blocks: list = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    markdown: Path
    html: Path
    interactive: Path  # the same charts live (tooltips), vega inlined
    charts: dict[str, Path]
    summary: list[str]
    constraint_answers: list[ConstraintAnswer]


def _models(table: pl.DataFrame) -> list[str]:
    return sorted(set(table["model"].to_list())) if table.height else []


def _change(ratio: float | None, low: float | None = None, high: float | None = None) -> str:
    """A ratio as the paper's change column (+4.86%), with its 95% interval when known."""
    if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
        return "n/a"
    text = f"{100 * (ratio - 1):+.2f}%"
    if low is not None and high is not None:
        text += f" [{100 * (low - 1):+.1f}, {100 * (high - 1):+.1f}]"
    return text


def _mean_ci(row: dict, prefix: str) -> str:
    """mean ± half-width of its 95% interval, to 4 and 2 significant digits (runs of 0.01 s and of
    600 s both read right); per 1,000 tokens when the row says how many tokens a repetition ran
    (each paired comparison calibrates its own repetition length, so raw seconds do not compare)."""
    mean = row.get(f"{prefix}_mean")
    low, high = row.get(f"{prefix}_ci95_low"), row.get(f"{prefix}_ci95_high")
    if mean is None:
        return "n/a"
    tokens = row.get("tokens_per_repetition")
    scale = 1000 / tokens if tokens else 1.0
    if low is None or high is None:
        return f"{mean * scale:.4g}"
    return f"{mean * scale:.4g} ± {(high - low) * scale / 2:.2g}"


def summary_lines(table: pl.DataFrame) -> list[str]:
    """Per model: one line per preset (energy, runtime, balance) and one on confidence. The lead's
    demo prints these; the report puts them first."""
    lines = []
    for model in _models(table):
        rows = table.filter(pl.col("model") == model).to_dicts()
        lines.append(f"**{model}**")
        for preset, label in SUMMARY_PRESETS.items():
            sentence = recommend(table, model, preset).sentence()
            lines.append(f"- {label}: {sentence.split(': ', 1)[1]}")
        notes = caveats(rows, "energy")  # the energy preset's caveats include every other preset's
        separated = [p for p in SUMMARY_PRESETS if recommend(table, model, p).gap == "clearly ahead"]
        confidence = (f"{len(separated)} of {len(SUMMARY_PRESETS)} choices are clearly ahead of their runner-up "
                      "(non-overlapping 95% intervals of opt)")
        lines.append(f"- Confidence: {confidence}" + ("; " + "; ".join(notes) if notes else "") + ".")
    return lines


def _measured_table(table: pl.DataFrame, model: str) -> tuple[list[str], list[list[str]]]:
    rows = sorted(table.filter(pl.col("model") == model).to_dicts(), key=lambda r: (r["technique"] != BASE, r["technique"]))
    memory = memory_column(table)
    benchmarks = benchmark_columns(table)
    unit = " / 1k tokens" if "tokens_per_repetition" in table.columns else ""
    header = ["Technique", "Perplexity", "Perplexity change (%)", f"Runtime (s{unit})¹", "Runtime change (%)²",
              f"Energy (J{unit})¹", "Energy change (%)²", "opt balanced / energy / runtime"]
    header += ["Memory (MB)"] if memory else []
    header += benchmarks
    body = []
    for r in rows:
        technique = r["technique"] + (f" (= {r['identical_to']}: no head removed)" if r.get("identical_to") else "")
        line = [
            technique, format_value(r.get("perplexity"), 2), _change(r.get("pc")) if r["technique"] != BASE else "-",
            _mean_ci(r, "seconds"), _change(r.get("tc"), r.get("tc_ci95_low"), r.get("tc_ci95_high")),
            _mean_ci(r, "joules"), _change(r.get("ec"), r.get("ec_ci95_low"), r.get("ec_ci95_high")),
            " / ".join(format_value(r.get(f"opt_{p}")) for p in ("balanced", "energy", "runtime")),
        ]
        size = memory_mb(r, memory) if memory else None
        line += [f"{size:.4g}" if size is not None else "n/a"] if memory else []
        line += [format_value(r.get(b)) for b in benchmarks]
        body.append(line)
    return header, body


def _method_footnote(table: pl.DataFrame, model: str) -> str:
    rows = table.filter(pl.col("model") == model).to_dicts()
    # Paired comparisons count pairs (issue 8); older tables count repetitions per variant.
    counted = "pairs" if any(r.get("pairs") is not None for r in rows) else "repetitions"
    reps = sorted({r.get(counted) for r in rows if r.get(counted) is not None})
    methods = sorted({str(r.get("energy_method")) for r in rows if r.get("energy_method")})
    meters = sorted({str(r.get("energy_meter")) for r in rows if r.get("energy_meter")})
    quality = sorted({str(r.get("quality_basis")) for r in rows if r.get("quality_basis")}) or ["perplexity"]
    return (
        f"¹ Mean ± half-width of the 95% t interval over {', '.join(map(str, reps)) or 'n/a'} {counted} "
        f"after warm-up; energy meter {', '.join(meters) or 'n/a'}, method {', '.join(methods) or 'n/a'}. "
        "² Change of the variant against the base with the 95% interval of the ratio in brackets (as the "
        "score table computes it: paired when base and variant were timed side by side). Perplexity: WikiText-2 "
        f"raw test, token level, measured once (deterministic). Quality basis of Pc: {', '.join(quality)}. "
        "opt = Pc^1.5·(α·Tc + β·Ec), lower is better (paper Eq. 1, Table 3)."
    )


def _printed_and_raw(row: dict, printed: str, ratio: str) -> str:
    """The paper's printed change beside the one its raw values give (they differ by up to 3.6 points)."""
    if row["technique"] == BASE:
        return "-"
    value = row.get(printed)
    text = f"{value:+.2f}%" if value is not None else "n/a"
    return f"{text} (raw {_change(row.get(ratio))})"


def _published_table(published: pl.DataFrame, model: str) -> tuple[list[str], list[list[str]]]:
    header = ["Technique (paper)", "key", "Perplexity", "Perplexity change (%)", "Runtime (s)", "Runtime change (%)",
              "Energy (kWh)", "Energy change (%)", "opt balanced / energy / runtime (ours, from raw values)"]
    body = []
    for r in published.filter(pl.col("model") == model).to_dicts():
        body.append([
            r["paper_label"], r["technique"], format_value(r["perplexity"], 2),
            _printed_and_raw(r, "perplexity_change_pct", "pc"), f"{r['seconds_mean']:.5g}",
            _printed_and_raw(r, "runtime_change_pct", "tc"), f"{r['energy_kwh']:.5g}",
            _printed_and_raw(r, "energy_change_pct", "ec"),
            " / ".join(format_value(r.get(f"opt_{p}")) for p in ("balanced", "energy", "runtime")),
        ])
    return header, body


def build_sections(
    table: pl.DataFrame,
    measurements: pl.DataFrame | None,
    chart_dir: Path,
    constraints: Constraints | None = None,
    paper_dir: Path = PAPER_TABLES,
    interactive_name: str = "the interactive page",
) -> tuple[list[Section], dict[str, Path], dict, list[ConstraintAnswer]]:
    """The report's sections, the chart files they show, the charts themselves, the constraint answers."""
    published = paper_scores(paper_dir)
    models = _models(table)
    chart_files: dict[str, Path] = {}
    specs: dict[str, object] = {}
    sections = [Section("Summary", [
        f"Measured here: {len(models)} model(s), {table.height} variant(s). opt is lower-is-better; 1 is the "
        "uncompressed base. A choice is *clearly ahead* when its opt interval does not overlap the runner-up's.",
        summary_lines(table),
    ])]
    answers = []
    if constraints is not None and constraints != Constraints():
        answers = [best_under(table, model, constraints) for model in models]
        sections.append(Section("Best under your constraints", [[f"- {a.sentence()}" for a in answers]]))

    pareto = Section("Pareto front", [])
    chart_section = Section("Charts", [])
    measured = Section("Measured results (the paper's table layout)", [])
    beside = Section("Published rows beside ours (published, not measured here)", [])
    published_models = set(published["model"].to_list())
    for model in models:
        front = pareto_front(table, model)
        pareto.blocks.append(
            f"**{model}**: {', '.join(front.front) or 'n/a'} (over {', '.join(front.objectives) or 'no complete objective'}; "
            "every other technique is worse in one objective without being better in any)")
        for name, chart in (("opt", charts.opt_by_preset(table, model, "measured here")),
                            ("quality-energy", charts.quality_vs_energy(table, model, "measured here")),
                            ("repetitions", charts.repetition_spread(measurements, model) if measurements is not None
                             else None)):
            if chart is not None:
                specs[f"{model}-{name}"] = chart
                chart_files[f"{model}-{name}"] = charts.to_png(chart, chart_dir / f"{model}-{name}.png")
        measured.blocks += [f"**{model}**", _measured_table(table, model), _method_footnote(table, model)]
        reference = model if model in published_models else CLOSEST_PUBLISHED
        note = ("" if model in published_models else
                f" No published row for {model}; shown: the paper's {reference} (Table 4), the closest size class.")
        beside.blocks += [f"**{model}** beside the paper's **{reference}**.{note}", _published_table(published, reference)]
    chart_section.blocks = [f"The same charts with tooltips: {interactive_name} (self-contained, opens offline).",
                            *chart_files.values()]

    across = _across_models_frame(table, published)
    specs["across-models"] = charts.across_models(across)
    chart_files["across-models"] = charts.to_png(specs["across-models"], chart_dir / "across-models.png")
    chart_section.blocks.append(chart_files["across-models"])

    claims = paper_claims_check(paper_dir, published)
    claim_rows = [[c["section"], c["model"], c["preset"], c["claimed_best"], c["equation_best"], format_value(c["claimed_opt"]),
                   format_value(c["best_opt"]), str(c["claimed_rank"]), "yes" if c["follows"] else "**no**"]
                  for c in claims.to_dicts()]
    not_following = claims.filter(~pl.col("follows")).height
    paper = Section("Where the paper's recommendations do not follow from its own equation", [
        f"{not_following} of {claims.height} recommendations of the paper are not what its equation ranks first "
        "on its own published numbers (ratios from the raw values; opt by our code). Quotes in "
        "data/paper_tables/claims.csv.",
        (["§", "model", "preset", "paper recommends", "equation ranks first", "opt (paper's pick)", "opt (first)",
          "rank of paper's pick", "follows"], claim_rows),
    ])
    return [*sections, chart_section, pareto, measured, beside, paper], chart_files, specs, answers


def _across_models_frame(table: pl.DataFrame, published: pl.DataFrame) -> pl.DataFrame:
    """Our models and the paper's GPT-2 series (its Fig 5 rows), tagged by source."""
    columns = ["model", "technique", "opt_balanced", "opt_energy", "opt_runtime"]
    ours = table.select([c for c in columns if c in table.columns]).with_columns(source=pl.lit("measured here"))
    paper = published.filter(pl.col("model").is_in(["gpt2", "gpt2-large", "gpt2-xl"])).select(columns).with_columns(
        source=pl.lit(PUBLISHED))
    return pl.concat([paper, ours], how="diagonal_relaxed")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(title: str, sections: list[Section], base: Path) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Path):
                out.append(f"![{block.stem}]({block.relative_to(base) if block.is_relative_to(base) else block})")
            elif isinstance(block, tuple):
                out.append(_md_table(*block))
            elif isinstance(block, list):
                out += block
            else:
                out.append(block)
            out.append("")
    return "\n".join(out)


def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"\*(.+?)\*", r"<em>\1</em>", escaped)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
#summary{border:2px solid #4c78a8;border-radius:6px;padding:.2em 1em;max-width:900px}
img{max-width:100%;display:block;margin:.5em 0}.note{font-size:12px;color:#555}"""


def _html_lines(lines: list[str]) -> str:
    """'- ' lines become list items, others (a model's name) paragraphs between the lists."""
    parts, in_list = [], False
    for line in lines:
        if line.startswith("- ") != in_list:
            parts.append("<ul>" if not in_list else "</ul>")
            in_list = not in_list
        parts.append(f"<li>{_inline(line[2:])}</li>" if in_list else f"<p>{_inline(line)}</p>")
    return "".join(parts) + ("</ul>" if in_list else "")


def to_html(title: str, sections: list[Section]) -> str:
    """One file, no external fetch: styles inline, charts as data: URIs."""
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        slug = re.sub(r"[^a-z0-9]+", "-", section.title.lower()).strip("-").split("-")[0]
        out.append(f"<section id='{slug}'><h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Path):
                out.append(f"<img alt='{html.escape(block.stem)}' src='{png_data_uri(block)}'>")
            elif isinstance(block, tuple):
                header, rows = block
                out.append("<table><thead><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header) + "</tr></thead><tbody>"
                           + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
                           + "</tbody></table>")
            elif isinstance(block, list):
                out.append(_html_lines(block))
            else:
                css = " class='note'" if block.startswith(("¹", "Measured here")) else ""
                out.append(f"<p{css}>{_inline(block)}</p>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(
    table: pl.DataFrame,
    out_dir: Path,
    measurements: pl.DataFrame | None = None,
    constraints: Constraints | None = None,
    paper_dir: Path = PAPER_TABLES,
    name: str = "decision_report",
) -> Report:
    """Write <out_dir>/<name>.md (charts beside it in <name>-charts/) and <name>.html (self-contained)."""
    if table.height == 0:
        raise ValueError("the opt-score table is empty: materialize opt_scores (or run the demo) first")
    out_dir.mkdir(parents=True, exist_ok=True)
    chart_dir = out_dir / f"{name}-charts"
    interactive_path = out_dir / f"{name}-interactive.html"
    sections, chart_files, specs, answers = build_sections(table, measurements, chart_dir, constraints, paper_dir,
                                                           interactive_path.name)
    title = f"Compression decision report ({datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')})"
    markdown_path, html_path = out_dir / f"{name}.md", out_dir / f"{name}.html"
    markdown_path.write_text(to_markdown(title, sections, out_dir))
    html_path.write_text(to_html(title, sections))
    interactive = charts.interactive_page(specs, f"{title}: interactive charts", interactive_path)
    return Report(markdown_path, html_path, interactive, chart_files, summary_lines(table), answers)
