"""Shared-context scoring gives lm-eval's plain HFLM answers: the same log-likelihoods and
is_greedy, request by request, on tiny models (fp32, bf16, bitsandbytes int8 / nf4, head-pruned
with a different head count per layer), with the plain path kept for what it cannot share."""

import pytest
import torch

from llmopt_assets.measure.benchmarks import PLAIN_HFLM, PREFIX_CACHE_HFLM, wrap_model
from llmopt_assets.measure.prefix_cache import group_by_context
from llmopt_assets.techniques.head_pruning import heads_per_layer, remove_heads
from llmopt_assets.techniques.quantization import quantize
from llmopt_assets_tests.tiny_models import VOCAB_SIZE, tiny_model, tiny_tokenizer

MAX_LENGTH = 48


def _ids(generator: torch.Generator, n: int) -> list[int]:
    return torch.randint(3, VOCAB_SIZE, (n,), generator=generator).tolist()


def _greedy(model, context: list[int], n: int) -> list[int]:
    """The continuation greedy decoding would produce: is_greedy must be True for it."""
    ids = list(context)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(context):]


def _requests(model) -> list[tuple]:
    """Multiple-choice items as lm-eval hands them over: shared contexts with one- to five-token
    choices (one the greedy continuation), a lone context, and one HFLM truncates on the left."""
    generator = torch.Generator().manual_seed(0)
    requests = []
    for item, (context_length, choice_lengths) in enumerate([(20, [1, 3, 5, 2]), (9, [4, 4]), (31, [1, 1, 1])]):
        context = _ids(generator, context_length)
        choices = [_ids(generator, n) for n in choice_lengths] + [_greedy(model, context, 3)]
        requests += [((f"item{item}", str(i)), context, choice) for i, choice in enumerate(choices)]
    requests.append((("lone", "0"), _ids(generator, 12), _ids(generator, 3)))
    long_context = _ids(generator, MAX_LENGTH + 5)
    requests += [(("long", str(i)), long_context, _ids(generator, 2)) for i in range(2)]
    return requests


def _both(model, requests, batch_size: int = 2):
    tokenizer = tiny_tokenizer()
    plain = wrap_model(model, tokenizer, batch_size=batch_size, max_length=MAX_LENGTH, lm_eval_model=PLAIN_HFLM)
    shared = wrap_model(model, tokenizer, batch_size=batch_size, max_length=MAX_LENGTH, lm_eval_model=PREFIX_CACHE_HFLM)
    with torch.inference_mode():
        return plain._loglikelihood_tokens(requests), shared._loglikelihood_tokens(requests), plain, shared


def test_grouping_by_hand() -> None:
    requests = [
        (None, [1, 2], [3]), (None, [1, 2], [4, 5]), (None, [7], [8]),  # a shared context, a lone one
        (None, [9] * 10, [1]), (None, [9] * 10, [2]),  # 11 tokens > max_length + 1 = 10: truncated
        (None, [1, 2], [6]),
    ]
    shared = group_by_context(requests, max_length=9)
    assert shared.groups == {(1, 2): [0, 1, 5]}
    assert shared.plain == [2, 3, 4]


def _pruned(arch: str):
    model = tiny_model(arch)
    # Layer 0 keeps one head (Llama: one KV group gone), layer 2 three (Llama: its groups keep 2 and
    # 1 query heads, the irregular case), layers 1 and 3 all four.
    remove_heads(model, {0: [0, 1, 3], 2: [2]})
    assert heads_per_layer(model) == [1, 4, 3, 4]
    return model


MODELS = {
    "gpt2": lambda: tiny_model("gpt2"),
    "opt": lambda: tiny_model("opt"),
    "llama": lambda: tiny_model("llama"),
    "llama-sdpa": lambda: tiny_model("llama", attn_implementation="sdpa"),
    "llama-head-pruned": lambda: _pruned("llama"),
    "gpt2-head-pruned": lambda: _pruned("gpt2"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_fp32_equals_plain_hflm(name: str) -> None:
    model = MODELS[name]()
    requests = _requests(model)
    plain, shared, plain_lm, shared_lm = _both(model, requests)
    assert shared_lm.prefix_cache_unusable is None
    for (ll_plain, greedy_plain), (ll_shared, greedy_shared) in zip(plain, shared, strict=True):
        assert ll_shared == pytest.approx(ll_plain, abs=1e-4)
        assert greedy_shared == greedy_plain
    # The greedy choices really test is_greedy = True, the random ones False.
    assert sum(g for _, g in plain) >= 3 and sum(not g for _, g in plain) >= 10
    # Shared contexts ran once: fewer tokens through the model than one full pass per request.
    assert shared_lm.forward_tokens < plain_lm.forward_tokens


# bf16: both paths round log-probabilities of magnitude ~10-30 to bf16, one ulp there is 0.0625.
@pytest.mark.parametrize(("scheme", "tolerance"), [("bf16", 0.25), ("int8", 1e-4), ("nf4", 1e-4)])
def test_reduced_precision_and_bitsandbytes_equal_plain_hflm(scheme: str, tolerance: float) -> None:
    model = tiny_model("llama")
    quantize(model, scheme)
    requests = _requests(model)
    plain, shared, plain_lm, shared_lm = _both(model, requests)
    assert shared_lm.prefix_cache_unusable is None
    assert shared_lm.forward_tokens < plain_lm.forward_tokens
    for (ll_plain, _), (ll_shared, _) in zip(plain, shared, strict=True):
        assert ll_shared == pytest.approx(ll_plain, abs=tolerance)


def test_a_model_that_cannot_continue_from_a_cache_takes_the_plain_path() -> None:
    model = tiny_model("gpt2")
    forward = model.forward

    def without_cache(*args, cache=None, past_key_values=None, use_cache=None, **kwargs):
        if use_cache:
            raise TypeError("this model keeps no KV cache")
        return forward(*args, use_cache=False, **kwargs)

    model.forward = without_cache
    requests = _requests(model)
    plain, shared, _, shared_lm = _both(model, requests)
    assert shared == plain
    assert "keeps no KV cache" in shared_lm.prefix_cache_unusable


def test_an_unknown_lm_eval_model_is_refused() -> None:
    from llmopt_assets.profiles import get_profile

    with pytest.raises(ValueError, match="lm_eval_model must be one of"):
        wrap_model(tiny_model("gpt2"), tiny_tokenizer(), lm_eval_model="vllm")
    with pytest.raises(ValueError, match="unknown benchmark_lm_eval_model 'vllm'"):
        get_profile("smoke", benchmark_lm_eval_model="vllm")
