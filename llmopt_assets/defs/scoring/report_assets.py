"""The decision report: recommendations with their confidence, constraint answers, altair charts
and the paper's published rows beside ours, as markdown and self-contained HTML in var/reports/."""

import dagster as dg
import polars as pl

from llmopt_assets.defs.resources import OPTIONAL_INPUT
from llmopt_assets.defs.scoring.assets import REPORTS_DIR
from llmopt_assets.scoring.charts import png_markdown
from llmopt_assets.scoring.decision import Constraints, with_benchmark_scores
from llmopt_assets.scoring.report import CODE_VERSION as REPORT_CODE_VERSION
from llmopt_assets.scoring.report import write_report


class DecisionReportConfig(dg.Config):
    """'Best under a constraint' queries answered in the report (leave a limit unset for none)."""

    max_perplexity_increase_pct: float | None = None
    max_memory_mb: float | None = None
    max_benchmark_drop_points: float | None = None


@dg.asset(
    group_name="scoring",
    kinds={"altair", "html"},
    code_version=REPORT_CODE_VERSION,
    ins={"benchmark_run": dg.AssetIn(metadata={OPTIONAL_INPUT: True})},
)
def decision_report(
    context: dg.AssetExecutionContext,
    config: DecisionReportConfig,
    opt_scores: pl.DataFrame,
    measurements: pl.DataFrame,
    benchmark_run: pl.DataFrame,
) -> dg.MaterializeResult:
    """Per model and preset the technique to use and whether it is clearly ahead of the runner-up
    (non-overlapping opt intervals), the Pareto front, answers to the configured constraints, charts
    (opt per preset, quality vs energy, across models with the paper's rows, repetition spread),
    the measured results in the paper's table layout and where the paper's recommendations do not
    follow from its own equation."""
    constraints = Constraints(config.max_perplexity_increase_pct, config.max_memory_mb,
                              config.max_benchmark_drop_points)
    # Benchmark scores (not only their Pc_n) for the drop constraint and the report's table.
    table = with_benchmark_scores(opt_scores, benchmark_run)
    report = write_report(table, REPORTS_DIR, measurements=measurements, constraints=constraints)
    metadata: dict = {
        "summary": dg.MetadataValue.md("\n".join(report.summary)),
        "html": dg.MetadataValue.path(str(report.html)),
        "markdown": dg.MetadataValue.path(str(report.markdown)),
    }
    if report.constraint_answers:
        metadata["constraints"] = dg.MetadataValue.md("\n".join(f"- {a.sentence()}" for a in report.constraint_answers))
    for name, path in report.charts.items():
        metadata[f"chart {name}"] = dg.MetadataValue.md(png_markdown(path))
    return dg.MaterializeResult(metadata=metadata)
