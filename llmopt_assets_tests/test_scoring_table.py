import json

import polars as pl
import pytest

from llmopt_assets.scoring.table import opt_table

HARDWARE = json.dumps({"cpu_model": "Test CPU"})


def rows(technique: str, perplexity: float, seconds: list[float], joules: list[float | None], method: str = "counter"):
    return [
        {
            "model": "m", "technique": technique, "repetition": i, "perplexity": perplexity,
            "seconds": s, "joules": j, "energy_method": method if j is not None else "unavailable",
            "energy_meter": "fake", "energy_is_estimate": method == "estimate", "protocol": "p",
            "hardware": HARDWARE, "fingerprint": f"fp-{technique}",
        }
        for i, (s, j) in enumerate(zip(seconds, joules))
    ]


def test_ratios_and_opt_against_hand_values() -> None:
    frame = pl.DataFrame(
        rows("base", 20.0, [10.0, 10.2, 9.8], [100.0, 102.0, 98.0])
        + rows("nf4", 22.0, [11.0, 11.2, 10.8], [50.0, 51.0, 49.0]),
        infer_schema_length=None,
    )
    table = opt_table(frame)
    nf4 = table.filter(pl.col("technique") == "nf4").row(0, named=True)
    assert nf4["pc"] == pytest.approx(1.1)
    assert nf4["tc"] == pytest.approx(1.1)
    assert nf4["ec"] == pytest.approx(0.5)
    # 1.1^1.5 * (0.5*1.1 + 0.5*0.5) = 1.153689 * 0.8
    assert nf4["opt_balanced"] == pytest.approx(1.1 ** 1.5 * 0.8)
    assert nf4["opt_energy"] == pytest.approx(1.1 ** 1.5 * (0.1 * 1.1 + 0.9 * 0.5))
    assert nf4["tc_ci95_low"] < 1.1 < nf4["tc_ci95_high"]
    assert nf4["ec_significant"] and nf4["tc_significant"]
    assert nf4["seconds_mean"] == pytest.approx(11.0)
    assert nf4["seconds_std"] == pytest.approx(0.2)
    assert nf4["flags"] == ""


def test_missing_energy_gives_no_opt_never_zero() -> None:
    frame = pl.DataFrame(
        rows("base", 20.0, [10.0, 10.1], [100.0, 101.0]) + rows("int8", 20.1, [30.0, 30.3], [None, None]),
        infer_schema_length=None,
    )
    int8 = opt_table(frame).filter(pl.col("technique") == "int8").row(0, named=True)
    assert int8["joules_mean"] is None
    assert int8.get("ec") is None
    assert int8["opt_balanced"] is None
    assert "energy methods mixed" in int8["flags"]


def test_estimates_and_missing_base_are_flagged() -> None:
    frame = pl.DataFrame(rows("ah90", 25.0, [5.0, 5.1], [10.0, 10.2], method="estimate"), infer_schema_length=None)
    row = opt_table(frame).row(0, named=True)
    assert "no base measurement" in row["flags"]
    frame = pl.DataFrame(
        rows("base", 20.0, [10.0, 10.1], [100.0, 101.0], "estimate")
        + rows("ah90", 25.0, [5.0, 5.1], [10.0, 10.2], "estimate"),
        infer_schema_length=None,
    )
    row = opt_table(frame).filter(pl.col("technique") == "ah90").row(0, named=True)
    assert "estimate" in row["flags"]


def test_implausible_power_reaches_the_score_flags() -> None:
    from llmopt_assets.measure.energy import ComponentEnergy, EnergyReading
    from llmopt_assets.measure.runs import PowerRange, repetition_row
    from llmopt_assets.measure.perplexity import PerplexityResult
    from llmopt_assets.measure.repetitions import Repetition

    # 900 J in 1 s is 900 W: far above a 65 W CPU's 1.5 × margin.
    reading = EnergyReading("fake", 1.0, (ComponentEnergy("cpu", 900.0, "counter", "test"),))
    repetition = Repetition(0, PerplexityResult(20.0, 100.0, 50, 1, 1.0), 1.0, reading)
    row = repetition_row(repetition, {"model": "m"}, PowerRange(max_watts=65.0, idle_watts=5.0))
    assert "above 1.5 × max 65.0 W" in row["energy_flags"]
    frame = pl.DataFrame(
        rows("base", 20.0, [1.0, 1.0], [10.0, 10.0]) + rows("nf4", 21.0, [1.0, 1.1], [900.0, 900.0]),
        infer_schema_length=None,
    ).with_columns(
        pl.when(pl.col("technique") == "nf4").then(pl.lit(row["energy_flags"])).otherwise(pl.lit("")).alias("energy_flags")
    )
    nf4 = opt_table(frame).filter(pl.col("technique") == "nf4").row(0, named=True)
    assert "above 1.5 × max 65.0 W" in nf4["flags"]


def test_runs_far_apart_in_time_are_flagged() -> None:
    base = [dict(r, measured_at="2026-11-01T10:00:00+00:00") for r in rows("base", 20.0, [1.0, 1.1], [10.0, 11.0])]
    near = [dict(r, measured_at="2026-11-01T10:20:00+00:00") for r in rows("nf4", 21.0, [1.0, 1.1], [9.0, 9.5])]
    far = [dict(r, measured_at="2026-11-03T10:00:00+00:00") for r in rows("int8", 21.0, [1.0, 1.1], [9.0, 9.5])]
    table = opt_table(pl.DataFrame(base + near + far, infer_schema_length=None))
    flags = dict(zip(table["technique"].to_list(), table["flags"].to_list()))
    assert "apart" not in flags["nf4"]
    assert "48.0 h apart from the base" in flags["int8"]
