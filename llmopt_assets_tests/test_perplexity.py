
import pytest
import torch

from llmopt_assets.measure.perplexity import PerplexityProtocol, evaluate_perplexity, windows
from llmopt_assets.measure.reference import reference_perplexity
from llmopt_assets_tests.tiny_models import random_token_ids, tiny_model


def reference(model, ids: torch.Tensor, max_length: int, stride: int) -> float:
    return reference_perplexity(model, ids, max_length, stride)[0]


@pytest.mark.parametrize("max_length,stride", [(32, 32), (32, 16), (17, 5), (64, 64), (128, 100)])
def test_matches_reference_loop(arch: str, max_length: int, stride: int) -> None:
    model = tiny_model(arch)
    ids = random_token_ids(1, 300, seed=1)[0]
    protocol = PerplexityProtocol("random", "", max_length, stride, "float32")
    ours = evaluate_perplexity(model, ids, protocol)
    expected = reference(model, ids, max_length, stride)
    assert ours.perplexity == pytest.approx(expected, rel=1e-5)


def test_scored_tokens_and_windows() -> None:
    # Non-overlapping windows of 10 over 35 tokens: [0,10) [10,20) [20,30) [30,35); each window's
    # first token has no context in it.
    spans = windows(35, 10, 10)
    assert [(w.begin, w.end) for w in spans] == [(0, 10), (10, 20), (20, 30), (30, 35)]
    assert sum(w.end - w.scored_from for w in spans) == 9 + 9 + 9 + 4
    # Overlapping: every token after the first is scored exactly once.
    spans = windows(35, 10, 4)
    scored = [t for w in spans for t in range(w.scored_from, w.end)]
    assert scored == list(range(1, 35))


def test_token_budget_limits_the_evaluation() -> None:
    model = tiny_model("gpt2")
    ids = random_token_ids(1, 500, seed=2)[0]
    protocol = PerplexityProtocol("random", "", 32, 32, "float32", max_tokens=96)
    result = evaluate_perplexity(model, ids, protocol)
    assert result.windows == 3
    assert result.perplexity == pytest.approx(reference(model, ids[:96], 32, 32), rel=1e-5)


def test_bfloat16_is_close_to_float32() -> None:
    model = tiny_model("llama")
    ids = random_token_ids(1, 200, seed=3)[0]
    fp32 = evaluate_perplexity(model, ids, PerplexityProtocol("random", "", 64, 64, "float32"))
    bf16 = evaluate_perplexity(model.to(torch.bfloat16), ids, PerplexityProtocol("random", "", 64, 64, "bfloat16"))
    assert bf16.perplexity == pytest.approx(fp32.perplexity, rel=0.02)


def test_budget_smaller_than_one_window_is_refused() -> None:
    with pytest.raises(ValueError, match="smaller than one window"):
        PerplexityProtocol("random", "", 512, 512, "float32", max_tokens=100)


def test_bad_protocols_are_refused() -> None:
    with pytest.raises(ValueError, match="stride"):
        PerplexityProtocol("random", "", 32, 64, "float32")
    with pytest.raises(ValueError, match="dtype"):
        PerplexityProtocol("random", "", 32, 32, "int3")


def test_corpus_shorter_than_budget_window_is_refused() -> None:
    protocol = PerplexityProtocol("random", "", 64, 64, "float32", max_tokens=128)
    with pytest.raises(ValueError, match="fewer than one window"):
        evaluate_perplexity(tiny_model("opt"), random_token_ids(1, 40)[0], protocol)


def test_nan_logits_raise_a_clear_error() -> None:
    model = tiny_model("gpt2")
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))
    protocol = PerplexityProtocol("random", "", 32, 32, "float32")
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        evaluate_perplexity(model, random_token_ids(1, 64)[0], protocol)
