from pathlib import Path

import pytest
import torch
from torch import nn

from llmopt_assets.models.architecture import decoder_layers
from llmopt_assets.techniques.head_pruning import (
    HEAD_SPEC_FILE,
    PER_QUERY_MAX,
    SINGLE_KEY_SHARE,
    head_attention_concentration,
    heads_per_layer,
    load_head_pruned,
    per_query_max,
    pruned_head_spec,
    read_head_spec,
    remove_heads,
    removed_parameter_count,
    save_head_spec,
    select_heads_to_prune,
    single_key_share,
)
from llmopt_assets_tests.tiny_models import random_token_ids, tiny_model

N_HEADS, HEAD_DIM = 4, 8
# Llama tiny: 4 query heads in 2 KV groups, {0, 1} -> KV 0 and {2, 3} -> KV 1.
SPECS = {
    "mixed": {0: [1], 1: [0, 1], 2: [0, 1, 3]},
    "group_partly_pruned": {0: [1], 3: [3]},  # groups of 1 and 2 query heads: not repeat_kv
    "whole_group_removed": {1: [2, 3], 2: [0, 1]},
    "one_head_per_group": {0: [0, 3]},  # uniform groups of 1 again
}


def output_projection(model: nn.Module, layer: nn.Module) -> nn.Module:
    if model.config.model_type == "gpt2":
        return layer.attn.c_proj
    if model.config.model_type == "opt":
        return layer.self_attn.out_proj
    return layer.self_attn.o_proj


def logits_with_heads_zeroed(model: nn.Module, heads: dict[int, list[int]], ids: torch.Tensor) -> torch.Tensor:
    """Reference: the unpruned model with the heads' outputs zeroed before the output projection."""
    handles = []
    for layer_index, removed in heads.items():
        def zero_heads(module: nn.Module, args: tuple, removed: list[int] = removed) -> tuple:
            x = args[0].clone()
            for h in removed:
                x[..., h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0.0
            return (x,)

        projection = output_projection(model, decoder_layers(model)[layer_index])
        handles.append(projection.register_forward_pre_hook(zero_heads))
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        for handle in handles:
            handle.remove()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_pruned_model_equals_unpruned_with_heads_zeroed(
    arch: str, attn_implementation: str, spec_name: str, tmp_path: Path
) -> None:
    heads = SPECS[spec_name]
    ids = random_token_ids(2, 16)
    model = tiny_model(arch, attn_implementation=attn_implementation)
    expected = logits_with_heads_zeroed(model, heads, ids)
    n_before = parameter_count(model)

    remove_heads(model, heads)
    with torch.no_grad():
        pruned_logits = model(ids).logits
    torch.testing.assert_close(pruned_logits, expected, atol=1e-5, rtol=0)
    assert heads_per_layer(model) == [N_HEADS - len(heads.get(i, [])) for i in range(4)]
    assert n_before - parameter_count(model) == removed_parameter_count(model.config, heads)

    model.save_pretrained(tmp_path)
    save_head_spec(tmp_path, heads)
    for loaded_implementation in ("eager", "sdpa"):
        loaded = load_head_pruned(tmp_path, attn_implementation=loaded_implementation)
        assert loaded.config._attn_implementation == loaded_implementation
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-5, rtol=0)
        assert pruned_head_spec(loaded) == heads


def test_removed_parameter_count_by_hand() -> None:
    # hidden 32, head_dim 8. GPT-2 head: q, k, v columns with bias 3 * (32*8 + 8), c_proj rows 8*32.
    gpt2 = tiny_model("gpt2").config
    assert removed_parameter_count(gpt2, {0: [1], 2: [0, 3]}) == 3 * (3 * 264 + 256)
    # Llama (no attention bias): a query head is q rows + o columns = 2 * 256; a whole KV group
    # adds its k and v rows = 2 * 256.
    llama = tiny_model("llama").config
    assert removed_parameter_count(llama, {0: [1]}) == 512
    assert removed_parameter_count(llama, {0: [0, 1]}) == 2 * 512 + 512
    assert removed_parameter_count(llama, {0: [0, 2], 1: [0, 1, 2]}) == 5 * 512 + 512


def test_removing_in_steps_equals_removing_at_once(arch: str) -> None:
    ids = random_token_ids(2, 12)
    at_once, in_steps = tiny_model(arch), tiny_model(arch)
    remove_heads(at_once, {0: [0, 1, 3], 2: [2]})
    remove_heads(in_steps, {0: [1], 2: [2]})
    remove_heads(in_steps, {0: [3, 0]})
    assert pruned_head_spec(in_steps) == {0: [0, 1, 3], 2: [2]}
    with torch.no_grad():
        torch.testing.assert_close(in_steps(ids).logits, at_once(ids).logits, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="not present"):
        remove_heads(in_steps, {0: [1]})
    with pytest.raises(ValueError, match="no head"):
        remove_heads(in_steps, {0: [2]})


def test_load_refuses_weights_that_do_not_match_the_spec(tmp_path: Path) -> None:
    model = tiny_model("opt")
    remove_heads(model, {0: [1]})
    model.save_pretrained(tmp_path)
    save_head_spec(tmp_path, {0: [2, 3]})
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_head_pruned(tmp_path)


def test_head_spec_round_trip(tmp_path: Path) -> None:
    assert read_head_spec(tmp_path) is None
    save_head_spec(tmp_path, {3: [2, 0], 1: [1], 0: []})
    assert (tmp_path / HEAD_SPEC_FILE).exists()
    assert read_head_spec(tmp_path) == {1: [1], 3: [0, 2]}


def slow_per_query_max(attentions: list[torch.Tensor], mask: torch.Tensor, first_query: int) -> torch.Tensor:
    result = torch.zeros(len(attentions), attentions[0].shape[1])
    for layer in range(len(attentions)):
        for head in range(attentions[0].shape[1]):
            shares = []
            for sentence in range(mask.shape[0]):
                for query in range(first_query, mask.shape[1]):
                    if mask[sentence, query]:
                        shares.append(max(attentions[layer][sentence, head, query].tolist()))
            result[layer, head] = sum(shares) / len(shares)
    return result


def slow_single_key_share(attentions: list[torch.Tensor], mask: torch.Tensor, first_query: int) -> torch.Tensor:
    """Per sentence: for each real key, the mean weight it gets from the counted queries that
    see it (at least `first_query` of them); the best key's mean; then the mean over sentences."""
    result = torch.zeros(len(attentions), attentions[0].shape[1])
    length = mask.shape[1]
    for layer in range(len(attentions)):
        for head in range(attentions[0].shape[1]):
            per_sentence = []
            for sentence in range(mask.shape[0]):
                best = None
                for key in range(length):
                    viewers = [
                        q for q in range(max(key, first_query), length) if mask[sentence, q]
                    ]
                    if not mask[sentence, key] or len(viewers) < first_query:
                        continue
                    share = sum(float(attentions[layer][sentence, head, q, key]) for q in viewers) / len(viewers)
                    best = share if best is None else max(best, share)
                if best is not None:
                    per_sentence.append(best)
            result[layer, head] = sum(per_sentence) / len(per_sentence)
    return result


SLOW_CRITERIA = {PER_QUERY_MAX: slow_per_query_max, SINGLE_KEY_SHARE: slow_single_key_share}


@pytest.mark.parametrize("criterion", [PER_QUERY_MAX, SINGLE_KEY_SHARE])
def test_concentration_matches_slow_loop(arch: str, criterion: str) -> None:
    ids = random_token_ids(3, 14, seed=1)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # right padding: its queries are not counted
    model = tiny_model(arch, attn_implementation="eager")
    with torch.no_grad():
        attentions = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    expected = SLOW_CRITERIA[criterion](attentions, mask, first_query=5)

    sdpa_model = tiny_model(arch, attn_implementation="sdpa")
    measured = head_attention_concentration(
        sdpa_model, ids, batch_size=2, attention_mask=mask, min_query_position=5, criterion=criterion
    )
    assert sdpa_model.config._attn_implementation == "sdpa"  # restored after the measurement
    assert measured.shape == (4, N_HEADS)
    torch.testing.assert_close(measured, expected, atol=1e-5, rtol=0)


def hand_made_attention(length: int) -> torch.Tensor:
    """[1 sentence, 3 heads, length, length] causal attention rows, each summing to 1:
    head 0 a sink (every query on token 0), head 1 previous-token (query q on q − 1; query 0 on
    itself), head 2 uniform over the keys each query sees."""
    weights = torch.zeros(1, 3, length, length, dtype=torch.float64)
    weights[0, 0, :, 0] = 1.0
    weights[0, 1, 0, 0] = 1.0
    for query in range(1, length):
        weights[0, 1, query, query - 1] = 1.0
    for query in range(length):
        weights[0, 2, query, : query + 1] = 1.0 / (query + 1)
    return weights


def test_literal_criterion_keeps_a_previous_token_head_and_prunes_a_sink() -> None:
    length, first_query = 32, 8
    attentions = [hand_made_attention(length)]
    mask = torch.ones(1, length, dtype=torch.long)
    literal = slow_single_key_share(attentions, mask, first_query)[0]
    per_query = slow_per_query_max(attentions, mask, first_query)[0]
    # by hand: the sink's token 0 gets all of every query's attention; the previous-token head
    # gives key k one query's weight among the 32 − k that see it, at most 1/8 (k = 24, the last
    # key seen by 8 counted queries); uniform: key 8 gets mean 1/(q+1) over q = 8..31
    uniform_key_8 = sum(1 / (q + 1) for q in range(8, 32)) / 24
    torch.testing.assert_close(literal, torch.tensor([1.0, 1 / 8, uniform_key_8]), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        per_query, torch.tensor([1.0, 1.0, sum(1 / (q + 1) for q in range(8, 32)) / 24]), atol=1e-6, rtol=0
    )
    weights = attentions[0]
    counted = torch.zeros(1, length, dtype=torch.float64)
    counted[:, first_query:] = 1.0
    sums, sentences = single_key_share(weights, counted, mask.to(torch.float64), first_query)
    torch.testing.assert_close((sums / sentences).float(), literal, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        (per_query_max(weights, counted) / (length - first_query)).float(), per_query, atol=1e-6, rtol=0
    )
    for threshold in (0.9, 0.8):
        assert select_heads_to_prune(literal[None], threshold) == {0: [0]}  # the sink only
        assert select_heads_to_prune(per_query[None], threshold) == {0: [0, 1]}  # and previous-token


def test_unknown_criterion_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown head-pruning criterion 'max'.*single-key-share"):
        head_attention_concentration(tiny_model("gpt2"), random_token_ids(1, 12), criterion="max")


def test_head_forced_onto_first_token_is_concentrated_and_selected() -> None:
    # GPT-2 layer 0, head 2: a marker token at position 0 owns input feature 0 (after ln_1 it
    # is ~sqrt(32) there and ~0 elsewhere); the head's query is a constant and its key reads
    # feature 0, so every query scores token 0 far above the others.
    model = tiny_model("gpt2")
    marker, head = 1, 2
    with torch.no_grad():
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wpe.weight[:, 0] = 0.0
        model.transformer.wte.weight[marker] = 0.0
        model.transformer.wte.weight[marker, 0] = 10.0
        c_attn = model.transformer.h[0].attn.c_attn
        q_columns = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
        k_columns = slice(32 + head * HEAD_DIM, 32 + (head + 1) * HEAD_DIM)
        c_attn.weight[:, q_columns] = 0.0
        c_attn.bias[q_columns] = 0.0
        c_attn.bias[head * HEAD_DIM] = 10.0
        c_attn.weight[:, k_columns] = 0.0
        c_attn.bias[k_columns] = 0.0
        c_attn.weight[0, 32 + head * HEAD_DIM] = 10.0
    ids = random_token_ids(4, 24)
    ids[:, 0] = marker
    concentration = head_attention_concentration(model, ids)
    assert concentration[0, head] > 0.99
    assert concentration.flatten().sort().values[-2] < 0.5  # no other head comes close
    assert select_heads_to_prune(concentration, 0.9) == {0: [head]}


def test_select_heads_to_prune_by_hand() -> None:
    concentration = torch.tensor(
        [
            [0.95, 0.10, 0.85, 0.50],
            [0.20, 0.30, 0.40, 0.50],
            [0.91, 0.99, 0.93, 0.97],  # every head above: the least concentrated (0) stays
            [0.90, 0.80, 0.81, 0.79],  # "above" is strict
        ]
    )
    assert select_heads_to_prune(concentration, 0.9) == {0: [0], 2: [1, 2, 3]}
    assert select_heads_to_prune(concentration, 0.8) == {0: [0, 2], 2: [1, 2, 3], 3: [0, 2]}
    for threshold in (0.0, 0.5, 0.9):
        selected = select_heads_to_prune(concentration, threshold)
        assert all(len(removed) < N_HEADS for removed in selected.values())


def test_profile_refuses_an_unknown_criterion() -> None:
    from llmopt_assets.profiles import get_profile

    assert get_profile("paper").head_criterion == SINGLE_KEY_SHARE  # the literal reading by default
    with pytest.raises(ValueError, match="unknown head-pruning criterion 'top'"):
        get_profile("smoke", head_criterion="top")
