"""Recommendations, rank-gap significance, the Pareto front and constraint queries on small
hand-made score tables whose answers are worked out by hand in the comments."""

import polars as pl
import pytest

from llmopt_assets.scoring.decision import (
    Constraints,
    benchmark_columns,
    best_under,
    opt_interval,
    pareto_front,
    ranks,
    recommend,
    recommendations,
    with_benchmark_scores,
)


def row(technique: str, pc: float, tc: float, ec: float, half: float | None = 0.02, **extra) -> dict:
    """A score row whose opt values are computed here by hand from Eq. 1."""
    r = {"model": "m", "technique": technique, "pc": pc, "tc": tc, "ec": ec,
         "tc_ci95_low": tc - half if half is not None else None, "tc_ci95_high": tc + half if half is not None else None,
         "ec_ci95_low": ec - half if half is not None else None, "ec_ci95_high": ec + half if half is not None else None}
    for preset, (a, b) in {"balanced": (.5, .5), "energy": (.1, .9), "runtime": (.9, .1)}.items():
        r[f"opt_{preset}"] = pc**1.5 * (a * tc + b * ec)
    return r | extra


def table(*rows: dict) -> pl.DataFrame:
    return pl.DataFrame(list(rows), infer_schema_length=None)


def test_opt_interval_is_eq1_at_the_ci_ends() -> None:
    # pc = 1.21 -> pc^1.5 = 1.331; balanced: 1.331 * (0.5*[0.78,0.82] + 0.5*[0.48,0.52]) = 1.331*[0.63,0.67]
    low, high = opt_interval(row("x", 1.21, 0.8, 0.5), "balanced")
    assert low == pytest.approx(1.331 * 0.63)
    assert high == pytest.approx(1.331 * 0.67)
    assert opt_interval(row("x", 1.21, 0.8, 0.5, half=None), "balanced") == (None, None)


def test_ranks_order_by_opt_per_model() -> None:
    # balanced opt: base 1.0, fast 0.5*0.5+0.5*0.6 = 0.55, lossy 1.21^1.5*0.5 = 0.6655
    frame = table(row("base", 1, 1, 1), row("fast", 1, 0.5, 0.6), row("lossy", 1.21, 0.5, 0.5))
    ranked = ranks(frame, "balanced")
    assert ranked["technique"].to_list() == ["fast", "lossy", "base"]
    assert ranked["rank"].to_list() == [1, 2, 3]
    assert ranked["opt"].to_list() == pytest.approx([0.55, 0.6655, 1.0])
    with pytest.raises(ValueError, match="unknown preset"):
        ranks(frame, "speed")


def test_rank_gap_significance_from_interval_overlap() -> None:
    # half-width 0.02 on Tc and Ec -> opt ± 0.02 when pc = 1 (α + β = 1).
    # fast 0.55 [0.53, 0.57] vs close 0.58 [0.56, 0.60]: overlap -> within noise.
    close = table(row("base", 1, 1, 1), row("fast", 1, 0.5, 0.6), row("close", 1, 0.56, 0.6))
    verdict = recommend(close, "m", "balanced")
    assert (verdict.best, verdict.runner_up, verdict.gap) == ("fast", "close", "within noise")
    assert verdict.within_noise == ("close",)
    assert "not separable from close" in verdict.sentence()
    # far 0.65 [0.63, 0.67] starts above 0.57 -> clearly ahead.
    apart = table(row("base", 1, 1, 1), row("fast", 1, 0.5, 0.6), row("far", 1, 0.7, 0.6))
    verdict = recommend(apart, "m", "balanced")
    assert (verdict.best, verdict.runner_up, verdict.gap) == ("fast", "far", "clearly ahead")
    assert verdict.within_noise == ()
    # Without intervals the gap is unknown, never significant.
    bare = table(row("base", 1, 1, 1, half=None), row("fast", 1, 0.5, 0.6, half=None))
    assert recommend(bare, "m", "balanced").gap == "unknown"
    assert recommend(table(row("fast", 1, 0.5, 0.6)), "m", "balanced").gap == "no runner-up"


def test_preset_changes_the_winner_and_base_can_win() -> None:
    # quant: Tc 1.05, Ec 0.5, Pc 1.0 -> energy 0.555, runtime 0.995, balanced 0.775
    # distil: Pc 1.44 (^1.5 = 1.728), Tc Ec 0.62 -> 1.0714 under every preset
    frame = table(row("base", 1, 1, 1, half=0.01), row("quant", 1, 1.05, 0.5, half=0.01),
                  row("distil", 1.44, 0.62, 0.62, half=0.01))
    best = {r.preset: r.best for r in recommendations(frame)}
    assert best == {"balanced": "quant", "energy": "quant", "runtime": "quant"}
    slow = table(row("base", 1, 1, 1, half=0.01), row("quant", 1, 1.2, 0.5, half=0.01))
    # runtime: 0.9*1.2 + 0.1*0.5 = 1.13 > 1 -> the base wins and the sentence says compression does not pay.
    runtime = recommend(slow, "m", "runtime")
    assert runtime.best == "base"
    assert "no compression pays off" in runtime.sentence()


def test_caveats_for_estimated_energy_and_failed_control() -> None:
    frame = table(row("base", 1, 1, 1, energy_informative=False, control_failed=True),
                  row("quant", 1, 1.05, 0.5, energy_informative=False, control_failed=True))
    notes = recommend(frame, "m", "energy").caveats
    assert any("A/A control failed" in n for n in notes)
    assert any("runtime preset in disguise" in n for n in notes)
    # Older tables: the estimate is read from the energy method.
    old = table(row("base", 1, 1, 1, energy_method="estimate"), row("q", 1, 1.05, 0.5, energy_method="estimate"))
    assert any("estimated from CPU time" in n for n in recommend(old, "m", "balanced").caveats)
    # issue 8's tables: control_failed is also true when no control ran; `control` tells them apart.
    missing = table(row("base", 1, 1, 1, control="missing", control_failed=True))
    assert recommend(missing, "m", "runtime").caveats == (
        "no A/A control was run (base vs a copy of itself): the machine's noise is unchecked",)
    clean = table(row("base", 1, 1, 1, energy_informative=True, control_failed=False))
    assert recommend(clean, "m", "energy").caveats == ()


def test_pareto_front_against_hand_dominance() -> None:
    # objectives pc, tc, ec, weights_bytes (all lower is better):
    # base   (1.00, 1.0, 1.0, 400)  best quality -> front
    # quant  (1.04, 1.1, 0.5, 100)  least memory and energy -> front
    # worse  (1.05, 1.2, 0.6, 120)  dominated by quant in every objective
    # prune  (1.30, 0.9, 0.9, 400)  fastest -> front
    # equal  (1.30, 0.9, 0.9, 400)  identical to prune: neither dominates the other -> front
    frame = table(row("base", 1.0, 1.0, 1.0, weights_bytes=400), row("quant", 1.04, 1.1, 0.5, weights_bytes=100),
                  row("worse", 1.05, 1.2, 0.6, weights_bytes=120), row("prune", 1.3, 0.9, 0.9, weights_bytes=400),
                  row("equal", 1.3, 0.9, 0.9, weights_bytes=400))
    result = pareto_front(frame, "m")
    assert result.objectives == ("pc", "tc", "ec", "weights_bytes")
    assert result.front == ["base", "equal", "prune", "quant"]
    assert result.dominated_by["worse"] == ("quant",)
    # On quality and energy alone prune is dominated by quant (1.04 < 1.3, 0.5 < 0.9).
    assert pareto_front(frame, "m", ("ec", "pc")).front == ["base", "quant"]


def test_pareto_drops_an_objective_some_rows_lack() -> None:
    frame = table(row("base", 1.0, 1.0, 1.0, weights_bytes=400), row("quant", 1.04, 1.1, 0.5, weights_bytes=None))
    result = pareto_front(frame, "m")
    assert "weights_bytes" not in result.objectives
    assert result.front == ["base", "quant"]


def test_constraint_query_picks_the_best_satisfying_variant() -> None:
    # perplexity: base 20, quant 20.6 (+3%), distil 24 (+20%); memory: 500, 150, 200 MB.
    frame = table(
        row("base", 1.0, 1.0, 1.0, perplexity=20.0, weights_bytes=500e6),
        row("quant", 1.03, 1.1, 0.5, perplexity=20.6, weights_bytes=150e6),
        row("distil", 1.2, 0.5, 0.5, perplexity=24.0, weights_bytes=200e6),
    )
    answer = best_under(frame, "m", Constraints(max_perplexity_increase_pct=5, max_memory_mb=300))
    assert answer.best == "quant"
    assert answer.satisfying == ("quant",)
    assert set(answer.failing) == {"base", "distil"}
    assert "perplexity +20.0% > 5%" in answer.failing["distil"]
    assert "memory 500.0 MB > 300 MB" in answer.failing["base"]


def test_constraint_query_with_no_answer_says_so() -> None:
    frame = table(row("base", 1.0, 1.0, 1.0, perplexity=20.0, weights_bytes=500e6),
                  row("quant", 1.03, 1.1, 0.5, perplexity=20.6, weights_bytes=150e6))
    answer = best_under(frame, "m", Constraints(max_perplexity_increase_pct=1, max_memory_mb=300))
    assert answer.best is None
    assert "nothing satisfies the constraints** (e.g. base: memory 500.0 MB > 300 MB)" in answer.sentence()
    # Without a memory figure nothing can be checked, and the answer says what is missing.
    bare = table(row("base", 1.0, 1.0, 1.0, perplexity=20.0), row("quant", 1.03, 1.1, 0.5, perplexity=20.6))
    answer = best_under(bare, "m", Constraints(max_memory_mb=300))
    assert answer.best is None
    assert set(answer.unknown) == {"base", "quant"}
    assert "no memory size in bytes" in answer.sentence()


def test_benchmark_drop_in_points() -> None:
    # hellaswag 0.452 -> 0.441 is a 1.1 point drop; arc 0.30 -> 0.305 a gain.
    frame = table(
        row("base", 1.0, 1.0, 1.0, hellaswag_acc_norm=0.452, hellaswag_acc_norm_stderr=0.01, arc_challenge=0.30),
        row("quant", 1.02, 1.1, 0.5, hellaswag_acc_norm=0.441, hellaswag_acc_norm_stderr=0.01, arc_challenge=0.305),
        row("light", 1.01, 1.0, 0.8, hellaswag_acc_norm=0.448, hellaswag_acc_norm_stderr=0.01, arc_challenge=0.30),
    )
    assert benchmark_columns(frame) == ["hellaswag_acc_norm", "arc_challenge"]
    answer = best_under(frame, "m", Constraints(max_benchmark_drop_points=1.0))
    assert "benchmark drop 1.1 points > 1 points" in answer.failing["quant"]
    # light: 1.01^1.5*(0.5+0.4) = 0.9135 < base 1.0
    assert answer.satisfying == ("light", "base")


def test_benchmark_run_rows_become_score_columns_for_the_drop_constraint() -> None:
    frame = table(row("base", 1.0, 1.0, 1.0), row("quant", 1.02, 1.1, 0.5), row("other", 1.0, 1.0, 0.9))
    runs = pl.DataFrame({
        "model": ["m"] * 4, "technique": ["base", "base", "quant", "quant"],
        "benchmark": ["hellaswag", "mmlu", "hellaswag", "mmlu"], "value": [0.40, 0.26, 0.385, 0.262],
    })
    wide = with_benchmark_scores(frame, runs)
    assert benchmark_columns(wide) == ["benchmark_hellaswag", "benchmark_mmlu"]
    quant = wide.filter(pl.col("technique") == "quant").row(0, named=True)
    assert (quant["benchmark_hellaswag"], quant["benchmark_mmlu"]) == (0.385, 0.262)
    answer = best_under(wide, "m", Constraints(max_benchmark_drop_points=1.0))
    # quant drops HellaSwag by 1.5 points; `other` has no benchmark run, so it cannot be checked.
    assert "benchmark drop 1.5 points > 1 points" in answer.failing["quant"]
    assert set(answer.unknown) == {"other"}
    assert answer.best == "base"
    assert with_benchmark_scores(frame, None) is frame


def test_pareto_quality_is_the_combined_penalty_where_every_row_has_it() -> None:
    # By perplexity alone quant (1.01) dominates bench (1.02); the combined penalty reverses it.
    frame = table(row("base", 1.0, 1.0, 1.0, quality_penalty=1.0),
                  row("quant", 1.01, 0.9, 0.9, quality_penalty=1.2), row("bench", 1.02, 0.9, 0.9, quality_penalty=1.1))
    result = pareto_front(frame, "m")
    assert result.objectives[0] == "quality_penalty"
    assert result.dominated_by["quant"] == ("bench",)
