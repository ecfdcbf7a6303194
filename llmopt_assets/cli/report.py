"""`llmopt report`: write the decision report (markdown + self-contained HTML with charts) from
the score table and the per-repetition measurements the pipeline wrote.

    llmopt report --max-ppl-increase 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

from llmopt_assets.cli.decide import add_constraint_arguments, constraints_from, read_scores, with_benchmark_runs
from llmopt_assets.paths import REPORTS_DIR, TABLES_DIR
from llmopt_assets.scoring.report import write_report

MEASUREMENTS = TABLES_DIR / "measurements.parquet"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmopt report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, help="a score table (.csv or .parquet); default: the pipeline's")
    parser.add_argument("--measurements", type=Path, default=MEASUREMENTS,
                        help="per-repetition rows for the spread charts (skipped when absent)")
    parser.add_argument("--out", type=Path, default=REPORTS_DIR, help="directory to write into")
    add_constraint_arguments(parser)
    args = parser.parse_args(argv)
    try:
        table = with_benchmark_runs(read_scores(args.table))
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    measurements = pl.read_parquet(args.measurements) if args.measurements.is_file() else None
    report = write_report(table, args.out, measurements=measurements, constraints=constraints_from(args))
    print("\n".join(line.replace("**", "") for line in report.summary))
    print(f"\nreport: {report.html}\n        {report.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
