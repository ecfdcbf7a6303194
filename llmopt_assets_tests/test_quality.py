"""The multi-measurement quality term against hand-computed values, below-chance cases included."""

import polars as pl
import pytest

from llmopt_assets.scoring.opt import QualityScore
from llmopt_assets.scoring.quality import BenchmarkPair, apply_benchmark_quality, base_above_chance, combined_quality

# Pc (perplexity) 1.1; ARC acc_norm 0.40 -> 0.35 at chance 0.25: (0.40 - 0.2) / (0.35 - 0.2) = 4/3;
# HellaSwag 0.30 -> 0.30: 1. Penalty = (1.1^1.5 + (4/3)^1.5 + 1^1.5) / 3
#                                   = (1.1536897 + 1.5396007 + 1) / 3 = 1.2310968.
COMBINED = 1.2310968
# On 1000 items both bases are clearly above chance: se = sqrt(0.25·0.75/1000) = 0.0136931,
# 1.645·se = 0.0225231 < 0.05 (HellaSwag's margin) and < 0.15 (ARC's).
ITEMS = 1000
ARC = BenchmarkPair(QualityScore(base=0.40, variant=0.35, higher_is_better=True, chance=0.25, name="arc_challenge"),
                    items=ITEMS, discrete=True, base_stderr=0.0155)
HELLASWAG = BenchmarkPair(QualityScore(base=0.30, variant=0.30, higher_is_better=True, chance=0.25, name="hellaswag"),
                          items=ITEMS, discrete=True, base_stderr=0.0145)


def test_combined_penalty_by_hand() -> None:
    quality = combined_quality(1.1, [ARC, HELLASWAG])
    assert quality["quality_penalty_combined"] == pytest.approx(COMBINED, rel=1e-6)
    assert quality["quality_penalty"] == quality["quality_penalty_combined"]
    assert quality["quality_penalty_perplexity"] == pytest.approx(1.1536897, rel=1e-6)
    assert quality["pc_arc_challenge"] == pytest.approx(4 / 3)
    assert quality["quality_basis"] == "perplexity+benchmarks"
    assert quality["quality_flags"] == []
    assert quality["quality_benchmarks_used"] == "arc_challenge, hellaswag"
    assert quality["quality_benchmarks_uninformative"] == ""


def test_without_benchmarks_the_perplexity_ratio_alone() -> None:
    quality = combined_quality(1.1, [])
    assert quality["quality_basis"] == "perplexity"
    assert quality["quality_penalty"] == pytest.approx(1.1536897, rel=1e-6)
    assert quality["quality_penalty_combined"] is None


@pytest.mark.parametrize("variant", [0.20, 0.10])
def test_a_variant_at_or_below_the_chance_floor_on_an_informative_benchmark_is_flagged_with_no_penalty(
    variant: float,
) -> None:
    below = BenchmarkPair(QualityScore(base=0.40, variant=variant, higher_is_better=True, chance=0.25, name="mmlu"),
                          items=ITEMS, discrete=True, base_stderr=0.0155)
    quality = combined_quality(1.1, [ARC, below])
    assert quality["quality_penalty"] is None and quality["quality_penalty_combined"] is None
    assert quality["pc_mmlu"] is None
    assert "below the chance floor" in quality["quality_basis"]
    assert any("mmlu: the variant's score" in flag for flag in quality["quality_flags"])
    # The perplexity-only penalty is still there to read.
    assert quality["quality_penalty_perplexity"] == pytest.approx(1.1536897, rel=1e-6)


def _pair(base: float, variant: float, chance: float, items: int, discrete: bool = True,
          stderr: float | None = None, name: str = "hellaswag") -> BenchmarkPair:
    score = QualityScore(base=base, variant=variant, higher_is_better=True, chance=chance, name=name)
    return BenchmarkPair(score, items=items, discrete=discrete, base_stderr=stderr)


# (base, chance, items, discrete, lm-eval stderr, informative), margins and thresholds by hand:
@pytest.mark.parametrize(("base", "chance", "items", "discrete", "stderr", "informative"), [
    # 4 items, 4 choices: se = sqrt(.25·.75/4) = 0.2165064, 1.645·se = 0.3561200.
    (0.50, 0.25, 4, True, 0.2887, False),  # 2/4: margin 0.25 ≤ 0.356
    (0.75, 0.25, 4, True, 0.2500, True),   # 3/4: margin 0.50 > 0.356
    (1.00, 0.25, 4, True, 0.0, True),      # 4/4, lm-eval's stderr 0 is not the one used
    (0.00, 0.25, 4, True, 0.0, False),     # 0/4 with stderr 0 must not pass either
    # 50 items: se = sqrt(.25·.75/50) = 0.0612372, 1.645·se = 0.1007267.
    (0.40, 0.25, 50, True, 0.07, True),    # margin 0.15 > 0.1007
    (0.34, 0.25, 50, True, 0.067, False),  # margin 0.09 ≤ 0.1007
    # winogrande, 8 items, 2 choices: se = sqrt(.25/8) = 0.1767767, 1.645·se = 0.2907729.
    (0.75, 0.50, 8, True, 0.16, False),    # 6/8: margin 0.25 ≤ 0.2908
    (0.875, 0.50, 8, True, 0.125, True),   # 7/8: margin 0.375 > 0.2908
    # truthfulqa_mc2 (continuous): lm-eval's stderr 0.05, 1.645·0.05 = 0.0822427.
    (0.40, 0.30, 4, False, 0.05, True),    # margin 0.10 > 0.0822
    (0.37, 0.30, 4, False, 0.05, False),   # margin 0.07 ≤ 0.0822
    (0.90, 0.30, 4, False, None, False),   # no stderr: nothing to test against
])
def test_base_above_chance_by_hand(base: float, chance: float, items: int, discrete: bool, stderr: float | None,
                                   informative: bool) -> None:
    verdict, why = base_above_chance(_pair(base, base, chance, items, discrete, stderr))
    assert verdict is informative
    assert why.startswith("informative" if informative else "uninformative")


def test_smoke_round_noise_does_not_knock_a_variant_out_of_the_ranking() -> None:
    # The demo's case: 4 HellaSwag items, base 1/4 and variant 0/4 (at or below 0.8·chance = 0.2):
    # the base is not above chance, so HellaSwag is shown as uninformative, not a "below chance"
    # flag, and the variant keeps its perplexity-only opt.
    quality = combined_quality(1.1, [_pair(0.25, 0.0, 0.25, 4, stderr=0.25)])
    assert quality["quality_penalty"] == pytest.approx(1.1536897, rel=1e-6)
    assert quality["quality_penalty_combined"] is None and quality["pc_hellaswag"] is None
    assert quality["quality_basis"] == "perplexity (no informative benchmark: base not above chance on hellaswag)"
    assert quality["quality_benchmarks_uninformative"] == "hellaswag"
    [flag] = quality["quality_flags"]
    assert flag.startswith("hellaswag: uninformative: base not above chance (n=4: ")
    assert "0.0000 ≤ 1.645 × 0.2165" in flag and "= 0.3561" in flag
    assert "below the chance floor" not in quality["quality_basis"]


def test_only_the_informative_benchmarks_enter_the_combined_penalty() -> None:
    # ARC on 1000 items is informative (4/3 as above); HellaSwag on 4 items is not and is left out
    # even though the variant's 0/4 is below 0.8·chance: (1.1^1.5 + (4/3)^1.5) / 2 = 1.3466452.
    quality = combined_quality(1.1, [ARC, _pair(0.5, 0.0, 0.25, 4, stderr=0.2887)])
    assert quality["quality_basis"] == "perplexity+benchmarks"
    assert quality["quality_penalty_combined"] == pytest.approx(1.3466452, rel=1e-6)
    assert quality["quality_benchmarks_used"] == "arc_challenge"
    assert quality["quality_benchmarks_uninformative"] == "hellaswag"
    assert quality["pc_hellaswag"] is None


def _opt_table() -> pl.DataFrame:
    # The opt table as scoring.table makes it: base, a benchmarked variant, an unbenchmarked one.
    def row(technique: str, pc: float, tc: float, ec: float, flags: str = "") -> dict:
        opts = {f"opt_{p}": pc**1.5 * (a * tc + b * ec) for p, (a, b) in
                {"balanced": (0.5, 0.5), "energy": (0.1, 0.9), "runtime": (0.9, 0.1)}.items()}
        return {"model": "m", "technique": technique, "pc": pc, "tc": tc, "ec": ec, **opts, "flags": flags}

    return pl.DataFrame(
        [row("base", 1.0, 1.0, 1.0), row("nf4", 1.1, 0.8, 0.6, "energy is an estimate"), row("int8", 1.02, 2.0, 1.5)]
    )


def _benchmarks(nf4_arc_hash: str = "h-arc", items: int = ITEMS) -> pl.DataFrame:
    row = lambda technique, benchmark, value, task_hash: {  # noqa: E731
        "model": "m", "technique": technique, "benchmark": benchmark, "value": value, "chance": 0.25,
        "task_hash": task_hash, "items": items, "discrete": True, "stderr": 0.015,
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


def test_a_smoke_sized_round_leaves_the_opt_on_perplexity_and_says_why() -> None:
    table = apply_benchmark_quality(_opt_table(), _benchmarks(items=4))
    nf4 = table.filter(pl.col("technique") == "nf4").row(0, named=True)
    assert nf4["quality_basis"].startswith("perplexity (no informative benchmark")
    assert nf4["opt_balanced"] == pytest.approx(nf4["opt_balanced_perplexity"], rel=1e-9)
    assert "arc_challenge: uninformative: base not above chance (n=4" in nf4["flags"]
