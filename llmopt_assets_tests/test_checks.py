"""The variant checks, computed in the core: each passes on a correct variant and fails on a
broken one, with counts checked by hand."""

import pytest
import torch

from llmopt_assets.models.store import ModelStore
from llmopt_assets.techniques import checks, sparsegpt
from llmopt_assets.techniques.recipe import parse
from llmopt_assets_tests.tiny_models import tiny_model, tiny_tokenizer

HEADS = {"heads_removed": 2, "parameters_before": 1000, "parameters_after": 800, "heads_per_layer_after": [3, 3]}


def test_heads_check_compares_the_drop_with_the_removed_projections() -> None:
    assert checks.heads_really_removed({"prune-heads": {**HEADS, "expected_parameter_drop": 200}}).passed
    wrong = checks.heads_really_removed({"prune-heads": {**HEADS, "expected_parameter_drop": 150}})
    assert not wrong.passed and wrong.metadata["parameter_drop"] == 200
    assert wrong.severity == "ERROR"
    # No head met the criterion: nothing removed, nothing dropped: a warning naming the twin.
    none_removed = {**HEADS, "heads_removed": 0, "parameters_after": 1000, "expected_parameter_drop": 0,
                    "threshold": 0.9, "criterion": "single-key-share", "highest_concentration": 0.42}
    warned = checks.heads_really_removed({"prune-heads": none_removed, "identical_to": "kd"})
    assert not warned.passed and warned.severity == "WARN" and warned.metadata["identical_to"] == "kd"
    assert "single-key-share > 0.9" in warned.description and "0.420" in warned.description
    # No head removed but parameters gone: the slicing is broken, an error.
    lost = checks.heads_really_removed({"prune-heads": {**none_removed, "parameters_after": 900}})
    assert not lost.passed and lost.severity == "ERROR" and lost.metadata["no_head_met_criterion"] is False
    assert checks.heads_really_removed({}) == checks.CheckOutcome("heads_really_removed", True, applies=False)


@pytest.mark.parametrize("found,expected,passed", [(12, 12, True), (11, 12, False), (0, 0, False)])
def test_quantization_check_counts_every_quantizable_layer(found: int, expected: int, passed: bool) -> None:
    details = {"quantize": {"bnb_modules_found": found, "quantizable_linear_layers": expected, "scheme": "int8"}}
    assert checks.modules_really_quantized(details).passed is passed
    assert not checks.modules_really_quantized({}).applies


def test_n_m_check_reads_the_stored_weights(tmp_path) -> None:
    store = ModelStore(tmp_path)
    model = tiny_model("gpt2")
    layers = sparsegpt.prunable_layers(model).values()
    groups = sum(layer.weight.numel() for layer in layers) // 4
    dense = store.write_weights("tiny", "base", model, tiny_tokenizer(), recipe=[], parent_fingerprint=None)
    recipe = parse("magnitude-2:4")
    # Random weights hold no zeros: every group of 4 breaks the 2:4 pattern.
    broken = checks.exact_n_m_sparsity(store, dense, recipe)
    assert not broken.passed and broken.metadata["violating_groups"] == groups
    sparsegpt.magnitude_prune(model, prune_n=2, prune_m=4)
    with torch.no_grad():
        sparsegpt.weight_out_in(next(iter(layers)))[0, :4] = 0.0  # one group with 4 zeros: allowed, counted apart
    pruned = store.write_weights("tiny", "magnitude-2:4", model, tiny_tokenizer(), recipe=[], parent_fingerprint=None)
    outcome = checks.exact_n_m_sparsity(store, pruned, recipe)
    assert outcome.passed and outcome.metadata["violating_groups"] == 0
    assert outcome.metadata["groups_with_extra_zeros"] == 1
    assert outcome.metadata["sparsity"] == pytest.approx(0.5 + 2 / (4 * groups))
    assert not checks.exact_n_m_sparsity(store, pruned, parse("int8")).applies
