"""Print the measured variants in the layout of the paper's Table 4 (perplexity, runtime and
energy, each with its change against the base), from the opt-score table the pipeline wrote.
Runtime and energy are the variant arm's, per 1,000 tokens (each comparison calibrates its own
repetition length); the changes are the paired Tc and Ec.

    make demo            # or any materialization of opt_scores
    .venv/bin/python benchmarks/paper_table.py [--model smollm2-135m]
"""

import argparse
import sys
from pathlib import Path

import polars as pl

from llmopt_assets.scoring.table import model_verdicts

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "var" / "tables" / "opt_scores.parquet"


# How the paper names each technique; its "4-Bit" is FP4 (load_in_4bit=True's default code), so
# our NF4 rows are shown beside it as "4-Bit NF4", not as the paper's rows.
PAPER_NAMES = {"kd": "Knowledge Distilled", "int8": "8-Bit", "fp4": "4-Bit", "nf4": "4-Bit NF4",
               "ah90": "90% AH", "ah80": "80% AH", "sparsegpt-2:4": "SparseGPT 2:4"}


def paper_name(technique: str) -> str:
    if technique == "base":
        return "Base"
    return ", ".join(PAPER_NAMES.get(part, part) for part in technique.split("+"))


def change(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{100 * (ratio - 1):+.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--table", default=str(TABLE))
    args = parser.parse_args()
    path = Path(args.table)
    if not path.is_file():
        sys.exit(f"{path} does not exist: run `make demo` (or materialize opt_scores) first")
    table = pl.read_parquet(path).filter(pl.col("model") == args.model)
    if table.height == 0:
        sys.exit(f"no measured variant of {args.model!r} in {path}")
    order = {"base": 0}
    rows = sorted(table.iter_rows(named=True), key=lambda r: (order.get(r["technique"], 1), r["technique"]))
    print(f"{args.model}: paired comparisons of {','.join(str(p) for p in sorted(set(table['pairs'].drop_nulls())))} "
          f"pairs per variant, energy method: {','.join(sorted(set(table['energy_method'].drop_nulls())))}")
    for verdict in model_verdicts(table, args.model):
        print(f"  ! {verdict}")
    header = (f"{'technique':22s} {'as in the paper':34s} {'perplexity':>11s} {'ppl chg':>9s} {'s/1k tok':>10s} {'±95%':>7s} "
              f"{'time chg':>9s} {'J/1k tok':>10s} {'±95%':>7s} {'energy chg':>10s} {'sig(T/E)':>8s} {'opt bal':>8s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        per_k = 1000 / r["tokens_per_repetition"] if r.get("tokens_per_repetition") else float("nan")
        t_half = (r["seconds_ci95_high"] - r["seconds_mean"]) * per_k if r.get("seconds_ci95_high") is not None else None
        e_half = (r["joules_ci95_high"] - r["joules_mean"]) * per_k if r.get("joules_ci95_high") is not None else None
        significant = f"{'y' if r.get('tc_significant') else 'n'}/{'y' if r.get('ec_significant') else 'n'}"
        seconds = r["seconds_mean"] * per_k if r.get("seconds_mean") is not None else float("nan")
        joules = r["joules_mean"] * per_k if r.get("joules_mean") is not None else float("nan")
        print(
            f"{r['technique']:22s} {paper_name(r['technique']):34s} {r['perplexity']:11.2f} {change(r.get('pc')):>9s} "
            f"{seconds:10.3f} "
            f"{(f'{t_half:.3f}' if t_half is not None else 'n/a'):>7s} {change(r.get('tc')):>9s} "
            f"{joules:10.2f} {(f'{e_half:.2f}' if e_half is not None else 'n/a'):>7s} "
            f"{change(r.get('ec')):>10s} {significant:>8s} "
            f"{(r.get('opt_balanced') if r.get('opt_balanced') is not None else float('nan')):8.3f}"
        )


if __name__ == "__main__":
    main()
