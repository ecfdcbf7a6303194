
import pytest
import torch

from llmopt_assets.measure.perplexity import PerplexityProtocol, evaluate_perplexity, window_batches, windows
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


@pytest.mark.parametrize("batch_tokens", [1, 64, 4096])
def test_batched_sdpa_windows_match_reference_loop(arch: str, batch_tokens: int) -> None:
    # The reference runs the eager attention one window at a time; ours SDPA, windows batched.
    ids = random_token_ids(1, 300, seed=4)[0]
    expected = reference(tiny_model(arch), ids, 32, 24)
    protocol = PerplexityProtocol("random", "", 32, 24, "float32")
    ours = evaluate_perplexity(tiny_model(arch, attn_implementation="sdpa"), ids, protocol, batch_tokens=batch_tokens)
    assert ours.perplexity == pytest.approx(expected, rel=1e-5)
    assert ours.scored_tokens == 299


def test_windows_batch_by_equal_length_up_to_the_token_budget() -> None:
    spans = windows(100, 20, 20)  # five windows of 20
    assert [len(b) for b in window_batches(spans, 40)] == [2, 2, 1]
    spans = windows(95, 20, 20)  # the last window is 15 tokens: never batched with the 20s
    batches = window_batches(spans, 1000)
    assert [[w.end - w.begin for w in b] for b in batches] == [[20, 20, 20, 20], [15]]
    assert [len(b) for b in window_batches(spans, 1)] == [1, 1, 1, 1, 1]


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


def test_matmul_peak_counts_two_flops_per_multiply_add() -> None:
    from llmopt_assets.measure.peak import matmul_peak, model_gflops

    ticks = iter([0.0, 0.5, 1.0, 1.25, 2.0, 3.0])  # three products: 0.5 s, 0.25 s, 1.0 s
    peak = matmul_peak(torch.float32, size=100, repeats=3, clock=lambda: next(ticks))
    flops = 2 * 100**3
    assert peak.gflops == pytest.approx(flops / 0.25 / 1e9)
    assert peak.median_gflops == pytest.approx(flops / 0.5 / 1e9)
    assert (peak.dtype, peak.threads) == ("float32", torch.get_num_threads())
    assert model_gflops(135_000_000, 500) == pytest.approx(135.0)
