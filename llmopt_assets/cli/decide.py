"""`llmopt decide`: which technique to use, how sure the data is, and the best variant under
constraints, from the score table the pipeline wrote (or the paper's published tables).

    llmopt decide --max-ppl-increase 5 --max-memory-mb 300
    llmopt decide --paper --model gpt2 --preset runtime

Exit status: 0, 1 when a constraint query has no answer for some model, 2 when there is no table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

from llmopt_assets.paths import REPORTS_DIR, TABLES_DIR
from llmopt_assets.scoring.decision import Constraints, best_under, pareto_front, recommend, with_benchmark_scores
from llmopt_assets.scoring.opt import PRESETS
from llmopt_assets.scoring.paper_tables import paper_scores

SCORE_TABLES = (REPORTS_DIR / "opt_scores.csv", TABLES_DIR / "opt_scores.parquet")


def read_scores(path: Path | None) -> pl.DataFrame:
    """The given table, else the newest of the pipeline's score tables (CSV report or Parquet)."""
    candidates = [path] if path is not None else [p for p in SCORE_TABLES if p.is_file()]
    existing = [p for p in candidates if p.is_file()]
    if not existing:
        raise FileNotFoundError(
            f"no score table at {', '.join(map(str, candidates or SCORE_TABLES))}: materialize opt_scores "
            "(scoring_job) or run the demo first, or pass --paper for the published tables")
    newest = max(existing, key=lambda p: p.stat().st_mtime)
    return pl.read_parquet(newest) if newest.suffix == ".parquet" else pl.read_csv(newest, infer_schema_length=None)


def with_benchmark_runs(table: pl.DataFrame, tables_dir: Path = TABLES_DIR) -> pl.DataFrame:
    """The score table with the benchmark round's scores beside it (for --max-benchmark-drop),
    from the benchmark_run partitions the pipeline wrote, if any."""
    paths = sorted((tables_dir / "benchmark_run").glob("*.parquet"))
    runs = pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed") if paths else None
    return with_benchmark_scores(table, runs)


def add_constraint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-ppl-increase", type=float, metavar="PCT", help="perplexity increase ≤ PCT percent")
    parser.add_argument("--max-memory-mb", type=float, metavar="MB", help="memory of the variant ≤ MB")
    parser.add_argument("--max-benchmark-drop", type=float, metavar="POINTS",
                        help="every benchmark score drops by ≤ POINTS (accuracy points, 0-100 scale)")


def constraints_from(args: argparse.Namespace) -> Constraints:
    return Constraints(args.max_ppl_increase, args.max_memory_mb, args.max_benchmark_drop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmopt decide", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--table", type=Path, help="a score table (.csv or .parquet); default: the pipeline's")
    source.add_argument("--paper", action="store_true", help="the paper's published Tables 4-9 (not measured here)")
    parser.add_argument("--model", action="append", help="only this model (repeatable)")
    parser.add_argument("--preset", choices=list(PRESETS), help="only this preset (constraints: default balanced)")
    add_constraint_arguments(parser)
    args = parser.parse_args(argv)
    try:
        table = paper_scores() if args.paper else with_benchmark_runs(read_scores(args.table))
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    models = args.model or sorted(set(table["model"].to_list()))
    unknown = sorted(set(models) - set(table["model"].to_list()))
    if unknown:
        print(f"no rows for {', '.join(unknown)}; models in the table: "
              f"{', '.join(sorted(set(table['model'].to_list())))}", file=sys.stderr)
        return 2
    constraints = constraints_from(args)
    unanswered = 0
    for model in models:
        print(f"{model}" + (" (published, not measured here)" if args.paper else ""))
        for preset in [args.preset] if args.preset else PRESETS:
            verdict = recommend(table, model, preset)
            print(f"  {verdict.sentence().replace('**', '')}")
            for note in verdict.caveats:
                print(f"    note: {note}")
        front = pareto_front(table, model)
        print(f"  Pareto front over {', '.join(front.objectives) or 'nothing'}: {', '.join(front.front)}")
        if constraints != Constraints():
            answer = best_under(table, model, constraints, args.preset or "balanced")
            print(f"  {answer.sentence().replace('**', '')}")
            unanswered += answer.best is None
    return 1 if unanswered else 0


if __name__ == "__main__":
    sys.exit(main())
