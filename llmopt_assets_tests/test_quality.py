"""The multi-measurement quality term against hand-computed values, below-chance cases included."""

import polars as pl
import pytest

from llmopt_assets.scoring.opt import QualityScore
from llmopt_assets.scoring.quality import apply_benchmark_quality, combined_quality

# Pc (perplexity) 1.1; ARC acc_norm 0.40 -> 0.35 at chance 0.25: (0.40 - 0.2) / (0.35 - 0.2) = 4/3;
# HellaSwag 0.30 -> 0.30: 1. Penalty = (1.1^1.5 + (4/3)^1.5 + 1^1.5) / 3
#                                   = (1.1536897 + 1.5396007 + 1) / 3 = 1.2310968.
COMBINED = 1.2310968
ARC = QualityScore(base=0.40, variant=0.35, higher_is_better=True, chance=0.25, name="arc_challenge")
HELLASWAG = QualityScore(base=0.30, variant=0.30, higher_is_better=True, chance=0.25, name="hellaswag")


def test_combined_penalty_by_hand() -> None:
    quality = combined_quality(1.1, [ARC, HELLASWAG])
    assert quality["quality_penalty_combined"] == pytest.approx(COMBINED, rel=1e-6)
    assert quality["quality_penalty"] == quality["quality_penalty_combined"]
    assert quality["quality_penalty_perplexity"] == pytest.approx(1.1536897, rel=1e-6)
    assert quality["pc_arc_challenge"] == pytest.approx(4 / 3)
    assert quality["quality_basis"] == "perplexity+benchmarks"
    assert quality["quality_flags"] == []


def test_without_benchmarks_the_perplexity_ratio_alone() -> None:
    quality = combined_quality(1.1, [])
    assert quality["quality_basis"] == "perplexity"
    assert quality["quality_penalty"] == pytest.approx(1.1536897, rel=1e-6)
    assert quality["quality_penalty_combined"] is None


@pytest.mark.parametrize(("base", "variant", "role"), [(0.19, 0.30, "base"), (0.20, 0.30, "base"), (0.40, 0.20, "variant")])
def test_a_score_at_or_below_the_chance_floor_is_flagged_with_no_penalty(base: float, variant: float, role: str) -> None:
    below = QualityScore(base=base, variant=variant, higher_is_better=True, chance=0.25, name="mmlu")
    quality = combined_quality(1.1, [ARC, below])
    assert quality["quality_penalty"] is None and quality["quality_penalty_combined"] is None
    assert quality["pc_mmlu"] is None
    assert "below the chance floor" in quality["quality_basis"]
    assert any(f"mmlu: the {role}'s score" in flag for flag in quality["quality_flags"])
    # The perplexity-only penalty is still there to read.
    assert quality["quality_penalty_perplexity"] == pytest.approx(1.1536897, rel=1e-6)


def _opt_table() -> pl.DataFrame:
    # The opt table as scoring.table makes it: base, a benchmarked variant, an unbenchmarked one.
    def row(technique: str, pc: float, tc: float, ec: float, flags: str = "") -> dict:
        opts = {f"opt_{p}": pc**1.5 * (a * tc + b * ec) for p, (a, b) in
                {"balanced": (0.5, 0.5), "energy": (0.1, 0.9), "runtime": (0.9, 0.1)}.items()}
        return {"model": "m", "technique": technique, "pc": pc, "tc": tc, "ec": ec, **opts, "flags": flags}

    return pl.DataFrame(
        [row("base", 1.0, 1.0, 1.0), row("nf4", 1.1, 0.8, 0.6, "energy is an estimate"), row("int8", 1.02, 2.0, 1.5)]
    )


def _benchmarks(nf4_arc_hash: str = "h-arc") -> pl.DataFrame:
    row = lambda technique, benchmark, value, task_hash: {  # noqa: E731
        "model": "m", "technique": technique, "benchmark": benchmark, "value": value, "chance": 0.25,
        "task_hash": task_hash,
    }
    return pl.DataFrame(
        [
            row("base", "arc_challenge", 0.40, "h-arc"),
            row("base", "hellaswag", 0.30, "h-hs"),
            row("nf4", "arc_challenge", 0.35, nf4_arc_hash),
            row("nf4", "hellaswag", 0.30, "h-hs"),
        ]
    )


def test_opt_uses_the_combined_penalty_where_benchmarks_ran_and_keeps_both() -> None:
    table = apply_benchmark_quality(_opt_table(), _benchmarks())
    rows = {r["technique"]: r for r in table.iter_rows(named=True)}
    nf4, int8 = rows["nf4"], rows["int8"]
    assert nf4["quality_basis"] == "perplexity+benchmarks"
    # balanced: 1.2310968 · (0.5·0.8 + 0.5·0.6) = 0.8617678; energy: · (0.1·0.8 + 0.9·0.6) = 0.7632800
    assert nf4["opt_balanced"] == pytest.approx(0.8617678, rel=1e-6)
    assert nf4["opt_energy"] == pytest.approx(0.7632800, rel=1e-6)
    assert nf4["opt_balanced_perplexity"] == pytest.approx(1.1536897 * 0.7, rel=1e-6)
    assert nf4["flags"] == "energy is an estimate"
    assert int8["quality_basis"] == "perplexity" and int8["opt_balanced"] == pytest.approx(1.02**1.5 * 1.75)
    assert rows["base"]["quality_basis"] == "perplexity" and rows["base"]["opt_balanced"] == pytest.approx(1.0)


def test_a_benchmark_on_other_items_than_the_base_is_left_out_and_said() -> None:
    table = apply_benchmark_quality(_opt_table(), _benchmarks(nf4_arc_hash="another-limit"))
    nf4 = table.filter(pl.col("technique") == "nf4").row(0, named=True)
    # Only HellaSwag pairs up: (1.1^1.5 + 1) / 2 = 1.0768449
    assert nf4["quality_penalty_combined"] == pytest.approx(1.0768449, rel=1e-6)
    assert "arc_challenge: scored on other items" in nf4["flags"]


def test_no_benchmark_table_leaves_the_perplexity_opt() -> None:
    table = apply_benchmark_quality(_opt_table(), pl.DataFrame())
    assert table["quality_basis"].to_list() == ["perplexity"] * 3
    assert table["opt_balanced"].to_list() == pytest.approx(table["opt_balanced_perplexity"].to_list(), rel=1e-6)
