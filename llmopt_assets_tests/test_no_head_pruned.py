"""A head pruning that finds no head above its threshold: nothing removed, the weights are the
parent's, and the variant says whose it is (a warning, not a failure of the pruning code)."""

import pytest
import torch

from llmopt_assets.measure.corpus import save_tokens
from llmopt_assets.models.store import ModelStore
from llmopt_assets.profiles import get_profile
from llmopt_assets.techniques import checks
from llmopt_assets.techniques.loading import load_variant
from llmopt_assets.techniques.recipe import parse
from llmopt_assets.techniques.variants import identical_variant, materialize_variant
from llmopt_assets_tests.tiny_models import random_token_ids, tiny_model, tiny_tokenizer


@pytest.fixture
def uniform_store(tmp_path) -> tuple[ModelStore, torch.nn.Module]:
    """A tiny Llama whose queries are all zero: every head attends uniformly to the keys it sees."""
    model = tiny_model("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
    store = ModelStore(tmp_path)
    store.write_weights("tiny", "base", model, tiny_tokenizer(), recipe=[], parent_fingerprint=None)
    save_tokens(store.corpus_path("tiny", "calibration"), random_token_ids(1, 4096).flatten(), {})
    return store, model


def test_no_head_above_the_threshold_leaves_the_parent_weights_and_warns(uniform_store) -> None:
    store, model = uniform_store
    profile = get_profile("smoke")  # single-key-share, windows of 128, queries counted from position 8
    manifest, details = materialize_variant(store, "tiny", parse("ah90"), profile, log=lambda _: None)
    heads = details["prune-heads"]
    assert heads["heads_removed"] == 0 and heads["no_head_met_criterion"] is True
    # Uniform attention: query q gives each of its q + 1 keys 1/(q + 1). The most concentrated
    # key is one every counted query (8..127) sees: its share is the mean of 1/(q + 1) over them.
    length, first = profile.head_calibration_length, 8
    expected = sum(1 / (q + 1) for q in range(first, length)) / (length - first)
    assert heads["highest_concentration"] == pytest.approx(expected, abs=1e-4)
    assert details["identical_to"] == "base" and manifest.details["identical_to"] == "base"
    stored, _ = load_variant(store, manifest)
    original = model.state_dict()
    assert all(torch.equal(tensor, original[name]) for name, tensor in stored.state_dict().items())

    outcome = checks.heads_really_removed(details)
    assert not outcome.passed and outcome.severity == "WARN"
    assert outcome.metadata["no_head_met_criterion"] is True and outcome.metadata["identical_to"] == "base"
    assert "not at fault" in outcome.description and "base unchanged" in outcome.description

    # A quantized sibling shares the unchanged weights and names its own twin.
    _, quantized = materialize_variant(store, "tiny", parse("int8-dyn+ah90"), profile, log=lambda _: None)
    assert quantized["identical_to"] == "int8-dyn"
    assert checks.heads_really_removed(quantized).metadata["identical_to"] == "int8-dyn"


def test_a_pruning_that_removed_heads_is_identical_to_nothing() -> None:
    removed = {"prune-heads": {"heads_removed": 3}}
    assert identical_variant(parse("kd+nf4+ah90"), removed) is None
    assert identical_variant(parse("kd+nf4+ah90"), {"prune-heads": {"heads_removed": 0}}) == "kd+nf4"
    assert identical_variant(parse("kd+nf4"), {}) is None


def test_the_warning_reaches_dagster_as_a_warn_severity_check() -> None:
    import dagster as dg

    from llmopt_assets.defs.models.assets import check_result

    details = {"prune-heads": {"heads_removed": 0, "parameters_before": 10, "parameters_after": 10,
                               "expected_parameter_drop": 0, "heads_per_layer_after": [4, 4], "threshold": 0.9},
               "identical_to": "kd"}
    result = check_result(checks.heads_really_removed(details))
    assert result.passed is False and result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["identical_to"].value == "kd" and "kd unchanged" in result.description
