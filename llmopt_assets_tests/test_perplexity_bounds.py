"""The perplexity_plausible check's verdicts, against hand-picked values."""

import math

import pytest

from llmopt_assets.measure.perplexity_bounds import MAX_RATIO_TO_BASE, perplexity_verdict


@pytest.mark.parametrize(
    "perplexity,base,plausible,broken",
    [
        (25.0, 20.0, True, False),  # a little worse than the base
        (25.0, None, True, False),  # base not measured yet: only the absolute bounds
        (math.nan, 20.0, False, True),
        (math.inf, None, False, True),
        (160.0, None, False, True),  # exactly the uniform guess over 160 tokens
        (159.9, None, True, False),
        (10.0 * MAX_RATIO_TO_BASE + 1, 10.0, False, False),  # far above the base: a warning
    ],
)
def test_verdicts(perplexity: float, base: float | None, plausible: bool, broken: bool) -> None:
    verdict = perplexity_verdict(perplexity, 160, base)
    assert (verdict.plausible, verdict.broken) == (plausible, broken)
    assert bool(verdict.reasons) == (not plausible)


def test_vocabulary_must_allow_a_guess() -> None:
    with pytest.raises(ValueError, match="vocabulary size"):
        perplexity_verdict(2.0, 1, None)
