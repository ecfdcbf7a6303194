import math
import struct

import polars as pl
import pytest

from llmopt_assets.scoring.altair_charts import (
    POPUP_MAX_HEIGHT,
    POPUP_MAX_WIDTH,
    popup_charts,
    to_png,
    trade_off_chart,
    trade_off_figure,
)
from llmopt_assets.scoring.charts import display_rows, flags_markdown, markdown_table
from llmopt_assets.scoring.table import CONTROL_FAILED, ENERGY_MIRRORS_TIME, NO_CONTROL, opt_table
from llmopt_assets.techniques.recipe import technique_keys


def quality(technique: str, perplexity: float, seconds: float = 1.0, model: str = "m") -> list[dict]:
    """A perplexity run: one deterministic evaluation (its timing is information only)."""
    return [{"measurement": "perplexity", "model": model, "technique": technique, "perplexity": perplexity,
             "seconds": seconds, "protocol": "p", "fingerprint": f"fp-{technique}"}]


def comparison(technique: str, base_seconds: list[float], time_factors: list[float],
               energy_factors: list[float] | None, method: str = "counter", model: str = "m",
               watts: float = 10.0, energy_flags: str = "") -> list[dict]:
    """A paired comparison: per pair the base's seconds, the variant's = base × factor; joules =
    seconds × watts (× the energy factor on the variant); None energy factors = no meter."""
    rows = []
    for pair, (seconds, t_factor) in enumerate(zip(base_seconds, time_factors)):
        e_factor = energy_factors[pair] if energy_factors else None
        for arm, arm_seconds, joules in (
            ("base", seconds, seconds * watts if energy_factors else None),
            ("variant", seconds * t_factor, seconds * watts * e_factor if energy_factors else None),
        ):
            rows.append({
                "measurement": "comparison", "model": model, "technique": technique, "pair": pair, "arm": arm,
                "seconds": arm_seconds, "joules": joules,
                "energy_method": method if joules is not None else "unavailable", "energy_meter": "fake",
                "energy_is_estimate": method == "estimate" and joules is not None, "energy_flags": energy_flags,
                "warmup_stable": True, "reached_min_repetition_seconds": True, "tokens_per_repetition": 1024,
                "fingerprint": f"fp-{technique}", "base_fingerprint": "fp-base", "protocol": "p",
            })
    return rows


def table_of(*parts: list[dict]) -> pl.DataFrame:
    return opt_table(pl.DataFrame([row for part in parts for row in part], infer_schema_length=None))


BASE_SECONDS = [1.0, 1.3, 0.9, 1.6]  # the machine's speed drifts between pairs: it cancels
AA = [1.01, 0.99, 1.005, 0.995]  # an A/A comparison: ratios around 1
WOBBLE = [1.01, 1 / 1.01, 1.02, 1 / 1.02]  # geometric mean exactly 1


def row_of(table: pl.DataFrame, technique: str, model: str = "m") -> dict:
    return table.filter((pl.col("technique") == technique) & (pl.col("model") == model)).row(0, named=True)


def test_ratios_and_opt_against_hand_values() -> None:
    table = table_of(
        quality("base", 20.0), quality("nf4", 22.0),
        comparison("base", BASE_SECONDS, AA, AA),
        comparison("nf4", BASE_SECONDS, [1.1 * w for w in WOBBLE], [0.5 * w for w in WOBBLE]),
    )
    nf4 = row_of(table, "nf4")
    assert nf4["pc"] == pytest.approx(1.1)
    # Geometric mean of the per-pair ratios: the wobble cancels exactly.
    assert nf4["tc"] == pytest.approx(1.1) and nf4["ec"] == pytest.approx(0.5)
    assert nf4["opt_balanced"] == pytest.approx(1.1 ** 1.5 * (0.5 * 1.1 + 0.5 * 0.5))
    assert nf4["opt_energy"] == pytest.approx(1.1 ** 1.5 * (0.1 * 1.1 + 0.9 * 0.5))
    assert nf4["opt_runtime"] == pytest.approx(1.1 ** 1.5 * (0.9 * 1.1 + 0.1 * 0.5))
    # Paired t interval on ln ratios: ln wobble = ±0.00995, ±0.0198; s = √(Σd²/3), t_{0.975,3} = 3.1824.
    s = math.sqrt((2 * math.log(1.01) ** 2 + 2 * math.log(1.02) ** 2) / 3)
    half = 3.182446305284263 * s / 2
    assert nf4["tc_ci95_low"] == pytest.approx(1.1 * math.exp(-half))
    assert nf4["tc_ci95_high"] == pytest.approx(1.1 * math.exp(half))
    assert nf4["tc_significant"] and nf4["ec_significant"]
    assert nf4["pairs"] == 4 and nf4["tokens_per_repetition"] == 1024
    assert nf4["seconds_mean"] == pytest.approx(sum(b * 1.1 * w for b, w in zip(BASE_SECONDS, WOBBLE)) / 4)
    assert nf4["control"] == "passed" and nf4["control_failed"] is False
    assert nf4["energy_informative"] is True
    assert nf4["flags"] == ""
    base = row_of(table, "base")  # the A/A control is the base's own row
    assert base["pc"] == 1.0 and base["tc_ci95_low"] <= 1.0 <= base["tc_ci95_high"] and not base["tc_significant"]


def test_time_comes_from_the_pairs_not_from_the_perplexity_runs() -> None:
    # The variant's perplexity run happened to be timed on a busy machine (3× slower); the paired
    # comparison saw no difference, and Tc says so.
    table = table_of(
        quality("base", 20.0, seconds=1.0), quality("ah90", 20.0, seconds=3.0),
        comparison("base", BASE_SECONDS, AA, AA), comparison("ah90", BASE_SECONDS, AA[::-1], AA),
    )
    ah90 = row_of(table, "ah90")
    assert ah90["tc"] == pytest.approx(1.0, abs=0.01) and not ah90["tc_significant"]


def test_a_failed_control_flags_every_row_of_its_model_only() -> None:
    table = table_of(
        quality("base", 20.0), quality("nf4", 21.0),
        comparison("base", BASE_SECONDS, [1.1 * w for w in WOBBLE], AA),  # A/A that sees a 10% change
        comparison("nf4", BASE_SECONDS, [1.5] * 4, [1.5] * 4),
        quality("base", 30.0, model="other"), comparison("base", BASE_SECONDS, AA, AA, model="other"),
    )
    for technique in ("base", "nf4"):
        row = row_of(table, technique)
        assert row["control"] == "failed" and row["control_failed"] is True
        assert CONTROL_FAILED in row["flags"]
    other = row_of(table, "base", model="other")
    assert other["control"] == "passed" and CONTROL_FAILED not in other["flags"]


def test_an_energy_only_control_failure_counts_too() -> None:
    table = table_of(quality("base", 20.0), comparison("base", BASE_SECONDS, AA, [1.2 * w for w in WOBBLE]))
    assert row_of(table, "base")["control"] == "failed"


def test_no_control_is_flagged() -> None:
    table = table_of(quality("base", 20.0), quality("nf4", 21.0), comparison("nf4", BASE_SECONDS, [1.5] * 4, [1.5] * 4))
    nf4 = row_of(table, "nf4")
    assert nf4["control"] == "missing" and nf4["control_failed"] is True
    assert NO_CONTROL in nf4["flags"]
    assert "no paired comparison" in row_of(table, "base")["flags"]
    assert row_of(table, "base").get("tc") is None


def test_energy_that_only_estimates_from_time_is_not_informative() -> None:
    table = table_of(
        quality("base", 20.0), quality("int8", 20.1),
        comparison("base", BASE_SECONDS, AA, AA, method="estimate"),
        comparison("int8", BASE_SECONDS, [1.4] * 4, [1.4] * 4, method="estimate"),
    )
    int8 = row_of(table, "int8")
    assert int8["energy_informative"] is False
    assert ENERGY_MIRRORS_TIME in int8["flags"] and "estimate" in int8["flags"]
    assert ENERGY_MIRRORS_TIME in markdown_table(table)


def test_missing_energy_gives_no_opt_never_zero() -> None:
    table = table_of(
        quality("base", 20.0), quality("int8", 20.1),
        comparison("base", BASE_SECONDS, AA, None), comparison("int8", BASE_SECONDS, [3.0] * 4, None),
    )
    int8 = row_of(table, "int8")
    assert int8["tc"] == pytest.approx(3.0)
    assert int8["joules_mean"] is None and int8.get("ec") is None
    assert int8["opt_balanced"] is None and int8["energy_informative"] is None
    assert int8["control"] == "passed"  # time alone decides the control when nothing was metered


def test_stale_comparisons_and_implausible_power_are_flagged() -> None:
    stale = [dict(r, base_fingerprint="fp-old-base") for r in comparison("nf4", BASE_SECONDS, [1.2] * 4, [1.2] * 4)]
    power = comparison("int8", BASE_SECONDS, [1.2] * 4, [1.2] * 4, energy_flags="average power 900 W above 1.5 × max 65.0 W")
    table = table_of(quality("base", 20.0), quality("nf4", 21.0), quality("int8", 21.0),
                     comparison("base", BASE_SECONDS, AA, AA), stale, power)
    assert "against another base than the perplexity's" in row_of(table, "nf4")["flags"]
    assert "above 1.5 × max 65.0 W" in row_of(table, "int8")["flags"]


def test_rows_without_a_measurement_kind_are_refused() -> None:
    with pytest.raises(ValueError, match="no 'measurement' column"):
        opt_table(pl.DataFrame([{"model": "m", "technique": "base", "perplexity": 1.0}]))


def test_the_chart_states_the_verdicts(tmp_path) -> None:
    table = table_of(
        quality("base", 20.0), quality("nf4", 21.0),
        comparison("base", BASE_SECONDS, [1.1] * 4, [1.1] * 4, method="estimate"),
        comparison("nf4", BASE_SECONDS, [1.5] * 4, [1.5] * 4, method="estimate"),
    )
    title = trade_off_figure(table, "m").to_dict()["title"]["text"]
    assert CONTROL_FAILED in title and ENERGY_MIRRORS_TIME in title
    assert trade_off_chart(table, "m", tmp_path / "m.png").stat().st_size > 0
    quiet = table_of(quality("base", 20.0), comparison("base", BASE_SECONDS, AA, AA))
    assert "title" not in trade_off_figure(quiet, "m").to_dict()


def test_the_ui_table_counts_flags_and_lists_them_beside_it() -> None:
    table = table_of(
        quality("base", 20.0), quality("nf4", 21.0), quality("int8", 20.5),
        comparison("base", BASE_SECONDS, AA, AA),
        comparison("nf4", BASE_SECONDS, [1.5] * 4, [1.5] * 4, method="estimate"),
        comparison("int8", BASE_SECONDS, [1.2 * w for w in WOBBLE], [0.8 * w for w in WOBBLE]),
    )
    rows = {r["technique"]: r for r in display_rows(table)}
    assert rows["int8"]["flags"] == 0  # a counter, a passed control, time and energy apart
    listed = flags_markdown(table)
    assert "**m int8**" not in listed
    nf4_part = listed.split("**m nf4**")[1].split("**m ")[0]
    bullets = [line for line in nf4_part.splitlines() if line.startswith("- ")]
    assert "- energy is an estimate, not a measured counter" in bullets and f"- {ENERGY_MIRRORS_TIME}" in bullets
    assert rows["nf4"]["flags"] == len(bullets)
    assert flags_markdown(table.with_columns(flags=pl.lit(""))) == "no flags"


def _png_size(path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (bytes 16-24, big-endian)."""
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_each_popup_chart_fits_the_ui_popup_with_every_technique(tmp_path) -> None:
    techniques = technique_keys()
    assert len(techniques) >= 38  # the longest list the recipe rules give
    parts = [quality("base", 20.0), comparison("base", BASE_SECONDS, AA, AA, method="estimate")]
    for i, technique in enumerate(t for t in techniques if t != "base"):
        factor = 0.4 + 0.07 * i  # spread over both sides of the base
        parts += [quality(technique, 20.0 * (1 + 0.01 * i)),
                  comparison(technique, BASE_SECONDS, [factor * w for w in WOBBLE], [factor * w for w in WOBBLE],
                             method="estimate")]
    table = table_of(*parts)
    charts = popup_charts(table, "m")
    assert list(charts) == ["opt per preset", "quality vs energy"]
    for name, chart in charts.items():
        assert ENERGY_MIRRORS_TIME in chart.to_dict()["title"]["text"]  # each states the verdicts
        width, height = _png_size(to_png(chart, tmp_path / f"{name}.png"))
        assert width <= POPUP_MAX_WIDTH and height <= POPUP_MAX_HEIGHT, (name, width, height)
    # Stacked in one figure, they would not fit: hence one pop-up each.
    assert _png_size(trade_off_chart(table, "m", tmp_path / "both.png"))[1] > POPUP_MAX_HEIGHT


def test_the_repetition_chart_shows_both_arms_per_1k_tokens() -> None:
    from llmopt_assets.scoring.altair_charts import repetition_spread

    rows = quality("nf4", 21.0, seconds=99.0) + comparison("nf4", [1.024, 2.048], [1.5, 1.5], [1.0, 1.0])
    chart = repetition_spread(pl.DataFrame(rows, infer_schema_length=None), "m").to_dict()
    values = [v for data in chart["datasets"].values() for v in data]
    seconds = sorted((v["arm"], v["value"]) for v in values if v["metric"].startswith("wall time"))
    # 1,024 tokens per repetition, the variant 1.5 × the base; not the perplexity run's 99 s.
    assert seconds == [("base", pytest.approx(1.0)), ("base", pytest.approx(2.0)),
                       ("variant", pytest.approx(1.5)), ("variant", pytest.approx(3.0))]
    assert {v["metric"] for v in values} == {"wall time (s per 1k tokens)", "energy (J per 1k tokens)"}


def test_a_variant_identical_to_another_is_flagged_not_passed_off_as_a_technique() -> None:
    from llmopt_assets.scoring.decision import recommend
    from llmopt_assets.scoring.report import _measured_table

    twin = [{**quality("kd+ah90", 30.0)[0], "identical_to": "kd"}]
    table = table_of(
        quality("base", 20.0), quality("kd", 30.0), twin,
        comparison("base", BASE_SECONDS, AA, AA),
        comparison("kd", BASE_SECONDS, [0.5 * w for w in WOBBLE], [0.5 * w for w in WOBBLE]),
        comparison("kd+ah90", BASE_SECONDS, [0.45 * w for w in WOBBLE], [0.45 * w for w in WOBBLE]),
    )
    assert row_of(table, "kd+ah90")["identical_to"] == "kd"
    assert "identical to kd: no head met the head-pruning criterion" in row_of(table, "kd+ah90")["flags"]
    assert row_of(table, "kd")["identical_to"] is None and "identical" not in row_of(table, "kd")["flags"]
    # Measured again, the twin may rank first by noise: the recommendation names whose it is.
    best = recommend(table, "m", "balanced")
    assert best.best == "kd+ah90" and "identical to kd" in best.sentence()
    _, body = _measured_table(table, "m")
    assert "kd+ah90 (= kd: no head removed)" in [line[0] for line in body]
    # Rows measured before the column existed are read as distinct (unknown), not as an error.
    assert row_of(table_of(quality("base", 20.0), quality("kd+ah90", 30.0)), "kd+ah90")["identical_to"] is None
