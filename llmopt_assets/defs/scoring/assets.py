"""Scores and charts: the opt-score table over every measured variant, and the trade-off charts."""

from pathlib import Path

import dagster as dg
import polars as pl

from llmopt_assets.models.keys import check_model_slug
from llmopt_assets.paths import REPORTS_DIR
from llmopt_assets.scoring.altair_charts import CODE_VERSION as CHARTS_CODE_VERSION
from llmopt_assets.scoring.altair_charts import popup_charts, to_png, trade_off_chart
from llmopt_assets.scoring.charts import DISPLAY_COLUMNS, display_rows, flags_markdown, markdown_table, png_markdown
from llmopt_assets.defs.resources import OPTIONAL_INPUT
from llmopt_assets.scoring.quality import CODE_VERSION as QUALITY_CODE_VERSION
from llmopt_assets.scoring.quality import INFORMATIVE_RULE, apply_benchmark_quality
from llmopt_assets.scoring.table import CODE_VERSION as SCORES_CODE_VERSION
from llmopt_assets.scoring.table import opt_table


@dg.asset(
    group_name="scoring",
    kinds={"polars"},
    ins={"benchmark_run": dg.AssetIn(metadata={OPTIONAL_INPUT: True})},
    code_version=f"{SCORES_CODE_VERSION}.{QUALITY_CODE_VERSION}",
)
def opt_scores(
    context: dg.AssetExecutionContext, measurements: pl.DataFrame, benchmark_run: pl.DataFrame
) -> pl.DataFrame:
    """Per variant: Pc (perplexity ratio), Tc and Ec (time and energy ratios from the paired,
    interleaved comparison, with 95% CIs and a paired-t significance flag) against the same
    model's base, and opt = Pc^1.5·(α·Tc + β·Ec) for the balanced, energy and runtime presets
    (paper Eq. 1, Table 3). Lower is better. Where the benchmark round ran on a variant and its
    base, the quality term is the mean of Pc_n^1.5 over the perplexity ratio and every informative
    benchmark (§3.4.1; one whose base is above chance, the others are shown in `flags` and left
    out); `quality_basis` says which term opt used, and the perplexity-only penalty and opt are
    kept beside it."""
    table = apply_benchmark_quality(opt_table(measurements), benchmark_run)
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    (REPORTS_DIR / "opt_scores.md").write_text(markdown_table(table) + "\n")
    table.write_csv(REPORTS_DIR / "opt_scores.csv")
    context.add_output_metadata(
        {
            "scores": opt_table_metadata(table),
            "flags": dg.MetadataValue.md(flags_markdown(table)),
            "variants": dg.MetadataValue.int(table.height),
            "benchmark_informative_rule": INFORMATIVE_RULE,
            "csv": dg.MetadataValue.path(str(REPORTS_DIR / "opt_scores.csv")),
        }
    )
    return table


@dg.asset(group_name="scoring", kinds={"altair"}, code_version=CHARTS_CODE_VERSION)
def trade_off_charts(context: dg.AssetExecutionContext, opt_scores: pl.DataFrame) -> dg.MaterializeResult:
    """Per model: opt per preset (the paper's Figs 2-4, with the opt interval from the Tc/Ec
    CIs), and quality change against energy change with CIs and the Pareto front; each its own
    metadata entry sized to open whole in the UI's pop-up, and both in one PNG file."""
    charts: dict[str, Path] = {}
    metadata: dict = {}
    for model in sorted(set(opt_scores["model"].to_list())):
        # A model key names a file here: a slug only, never a path ('../x' is refused).
        slug = check_model_slug(model)
        charts[model] = trade_off_chart(opt_scores, model, REPORTS_DIR / f"{slug}-trade-offs.png")
        for name, chart in popup_charts(opt_scores, model).items():
            path = to_png(chart, REPORTS_DIR / "popup" / f"{slug}-{name.replace(' ', '-')}.png")
            metadata[f"{model}: {name}"] = dg.MetadataValue.md(png_markdown(path))
    metadata["files"] = dg.MetadataValue.json({m: str(p) for m, p in charts.items()})
    return dg.MaterializeResult(metadata=metadata)


def opt_table_metadata(table: pl.DataFrame) -> dg.TableMetadataValue:
    """The opt-score table as Dagster table metadata: the UI renders it inline, typed and sortable."""
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name, kind, description) for name, kind, description in DISPLAY_COLUMNS]
    )
    records = [dg.TableRecord(row) for row in display_rows(table)]
    return dg.MetadataValue.table(records=records, schema=schema)

