"""`llmopt lineage`: where a result came from: the weights (fingerprint, parent chain, recipe,
calibration, code versions), the evaluation text (its hash) and the runs that measured it.

    llmopt lineage smollm2-135m kd+int8
    llmopt lineage --row 3            # the fourth row of the opt_scores table

Exit status: 0, 2 when the result or its artifact cannot be found.
"""

import argparse
import sys
from pathlib import Path

import polars as pl

from llmopt_assets.measure.lineage import describe, trace
from llmopt_assets.models.store import ModelStore
from llmopt_assets.paths import STORE_DIR, TABLES_DIR

MEASURING_ASSETS = ("perplexity_run", "comparison_run")


def measurement_rows(tables: Path, model: str, technique: str) -> list[dict]:
    """The rows the measuring assets wrote for this partition (one Parquet file each)."""
    rows: list[dict] = []
    for asset in MEASURING_ASSETS:
        path = tables / asset / f"{model}__{technique}.parquet"
        if path.is_file():
            rows += pl.read_parquet(path).to_dicts()
    return rows


def score_row(tables: Path, index: int) -> tuple[str, str]:
    path = tables / "opt_scores.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no score table at {path}: materialize opt_scores (scoring_job) first")
    scores = pl.read_parquet(path)
    if not 0 <= index < scores.height:
        raise IndexError(f"opt_scores has {scores.height} rows (0..{scores.height - 1}), not row {index}")
    row = scores.row(index, named=True)
    return row["model"], row["technique"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmopt lineage", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="model slug, e.g. smollm2-135m")
    parser.add_argument("technique", nargs="?", help="technique key, e.g. kd+int8")
    parser.add_argument("--row", type=int, help="a row of the opt_scores table (0-based) instead")
    parser.add_argument("--store", type=Path, default=STORE_DIR)
    parser.add_argument("--tables", type=Path, default=TABLES_DIR)
    args = parser.parse_args(argv)
    if (args.row is None) == (args.model is None or args.technique is None):
        parser.error("give a model and a technique, or --row N")
    try:
        model, technique = score_row(args.tables, args.row) if args.row is not None else (args.model, args.technique)
        lineage = trace(ModelStore(args.store), model, technique, measurement_rows(args.tables, model, technique))
    except (FileNotFoundError, IndexError) as error:
        print(f"llmopt lineage: {error}", file=sys.stderr)
        return 2
    print(describe(lineage))
    return 0


if __name__ == "__main__":
    sys.exit(main())
