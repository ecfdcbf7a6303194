import pytest

from llmopt_assets.scoring.opt import (
    PRESETS,
    BelowChanceFloor,
    QualityScore,
    opt_from_ratios,
    preset_weights,
    quality_penalty,
    quality_ratio,
)


def test_worked_check_from_design() -> None:
    # Paper Table 4, GPT-2 4-bit, with the ratios the paper prints (+3.79%, +4.86%, -50.21%).
    assert opt_from_ratios(1.0379, 1.0486, 0.4979, *PRESETS["balanced"]) == pytest.approx(0.8176, abs=1e-4)


# (base ppl, s, kWh, variant ppl, s, kWh) from the paper's Tables 4 and 5, and opt for the
# balanced / energy / runtime presets computed by hand from those raw numbers.
PAPER_ROWS = {
    "gpt2 8-bit": ((34.29, 212.33, 0.02335, 34.40, 644.67, 0.01017), (1.7442, 0.6990, 2.7895)),
    "gpt2 4-bit": ((34.29, 212.33, 0.02335, 35.56, 222.67, 0.01162), (0.8165, 0.5837, 1.0493)),
    "gpt2 KD": ((34.29, 212.33, 0.02335, 49.41, 131.67, 0.01395), (1.0530, 1.0373, 1.0687)),
    "gpt2-large 4-bit": ((26.93, 1069.33, 0.12282, 27.31, 729, 0.06011), (0.5980, 0.5195, 0.6766)),
    "gpt2-large KD": ((26.93, 1069.33, 0.12282, 43.39, 569.67, 0.06481), (1.0844, 1.0802, 1.0885)),
}


@pytest.mark.parametrize("name", PAPER_ROWS)
def test_paper_tables(name: str) -> None:
    (pb, tb, eb, pv, tv, ev), expected = PAPER_ROWS[name]
    pc = quality_ratio(QualityScore(base=pb, variant=pv))
    for preset, value in zip(("balanced", "energy", "runtime"), expected):
        assert opt_from_ratios(pc, tv / tb, ev / eb, *preset_weights(preset)) == pytest.approx(value, abs=1e-4)


def test_quality_loss_is_penalised_in_both_directions() -> None:
    # Worse perplexity (higher) and worse accuracy (lower) both give Pc > 1.
    assert quality_ratio(QualityScore(base=20, variant=25)) == pytest.approx(1.25)
    assert quality_ratio(QualityScore(base=0.6, variant=0.5, higher_is_better=True, chance=0.25)) > 1


def test_several_measurements_average_the_powered_ratios() -> None:
    # Accuracy 0.40 -> 0.35 with chance 0.25: (0.40 - 0.2) / (0.35 - 0.2) = 4/3; ppl 20 -> 22: 1.1.
    scores = [
        QualityScore(base=0.40, variant=0.35, higher_is_better=True, chance=0.25),
        QualityScore(base=20.0, variant=22.0),
    ]
    assert quality_penalty(scores) == pytest.approx(1.3466452, rel=1e-6)


@pytest.mark.parametrize(
    ("base", "variant"),
    [
        (0.5, 0.19),  # variant below 0.8 × 0.25 = 0.2: the ratio would be negative
        (0.5, 0.2),  # variant exactly at the floor: division by zero
        (0.19, 0.5),  # base below the floor: a negative numerator, a complex number after ^1.5
        (0.2, 0.2),
    ],
)
def test_at_or_below_the_chance_floor_there_is_no_ratio(base: float, variant: float) -> None:
    score = QualityScore(base=base, variant=variant, higher_is_better=True, chance=0.25, name="arc")
    with pytest.raises(BelowChanceFloor, match="arc: the (base|variant)'s score .* at or below 0.8 × chance"):
        quality_ratio(score)
    with pytest.raises(BelowChanceFloor):
        quality_penalty([QualityScore(base=20.0, variant=22.0), score])


def test_just_above_the_floor_is_finite() -> None:
    # (0.30 - 0.2) / (0.201 - 0.2) = 100
    ratio = quality_ratio(QualityScore(base=0.30, variant=0.201, higher_is_better=True, chance=0.25))
    assert ratio == pytest.approx(100.0)


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        preset_weights("speedy")
