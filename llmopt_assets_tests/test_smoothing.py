"""SmoothQuant folding (techniques/smoothing.py): exactness against the unfolded model, the
factors against the paper's formula written out, and the point of it (outliers, int8)."""

import copy

import pytest
import torch

from llmopt_assets.techniques import head_pruning, smoothing
from llmopt_assets.techniques.quantization import quantize
from llmopt_assets_tests.tiny_models import ARCHITECTURES, random_token_ids, tiny_model


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def random_factors(groups: list[smoothing.SmoothingGroup], seed: int = 0) -> dict[str, torch.Tensor]:
    """Log-uniform factors in [1/20, 20]: far from 1, so a fold on the wrong rows or columns shows."""
    generator = torch.Generator().manual_seed(seed)
    return {
        g.producer: torch.exp((torch.rand(max(g.channel_to_row) + 1, generator=generator) * 2 - 1) * 3.0)
        for g in groups
    }


def logits(model: torch.nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(token_ids).logits


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_folding_any_factors_leaves_the_model_function_unchanged(arch: str) -> None:
    model = tiny_model(arch)
    token_ids = random_token_ids(2, 24)
    reference = logits(model, token_ids)
    groups, _ = smoothing.smoothing_groups(model)

    smoothing.fold_smoothing(model, groups, random_factors(groups))

    assert relative_error(logits(model, token_ids), reference) < 1e-5
    # and the weights really moved: the fold is not a no-op
    original = dict(tiny_model(arch).named_parameters())
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, original[n])]
    assert len(moved) >= len(groups)


def test_folding_head_pruned_llama_with_uneven_kv_groups() -> None:
    """After head pruning, layer 0 keeps query heads {1, 2, 3} of KV groups {0: [0, 1], 1: [2, 3]}:
    uneven groups, so the value projection is wrapped to copy KV heads per query head; layer 1
    keeps {0, 1} (one whole group: plain repeat_kv with one KV head)."""
    model = tiny_model("llama")
    head_pruning.remove_heads(model, {0: [0], 1: [2, 3]})
    assert isinstance(model.model.layers[0].self_attn.v_proj, head_pruning.KeyValueHeadExpansion)
    token_ids = random_token_ids(2, 24)
    reference = logits(model, token_ids)
    groups, _ = smoothing.smoothing_groups(model)
    value_group = next(g for g in groups if g.producer == "model.layers.0.self_attn.v_proj.projection")
    head_dim = model.model.layers[0].self_attn.head_dim
    # query heads 1, 2, 3 (positions 0, 1, 2 of o_proj's input) read KV heads 0, 1, 1
    expected_rows = [kv * head_dim + d for kv in (0, 1, 1) for d in range(head_dim)]
    assert list(value_group.channel_to_row) == expected_rows

    smoothing.fold_smoothing(model, groups, random_factors(groups, seed=3))

    assert relative_error(logits(model, token_ids), reference) < 1e-5


def test_factors_follow_the_paper_formula_written_out() -> None:
    """s_j = max|X_j|^α / max|W_j|^(1−α), with max|W_j| over every layer reading channel j, and
    one s per value row shared by every query-head channel it feeds (grouped-query attention)."""
    model = tiny_model("llama")  # 4 query heads on 2 KV heads, head_dim 8
    groups, _ = smoothing.smoothing_groups(model)
    generator = torch.Generator().manual_seed(1)
    absmax = {name: torch.rand(model.get_submodule(name).in_features, generator=generator) + 0.1
              for g in groups for name in g.consumers}
    alpha = 0.7

    factors = smoothing.smoothing_factors(model, groups, absmax, alpha)

    norm = "model.layers.0.input_layernorm"
    qkv = [model.get_submodule(f"model.layers.0.self_attn.{n}").weight for n in ("q_proj", "k_proj", "v_proj")]
    for j in range(32):
        x_max = absmax["model.layers.0.self_attn.q_proj"][j]  # the three read the same input
        x_max = max(x_max, absmax["model.layers.0.self_attn.k_proj"][j], absmax["model.layers.0.self_attn.v_proj"][j])
        w_max = max(float(w[:, j].detach().abs().max()) for w in qkv)
        assert factors[norm][j].item() == pytest.approx(float(x_max) ** alpha / w_max ** (1 - alpha), rel=1e-5)
    value = "model.layers.0.self_attn.v_proj"
    o_proj = model.get_submodule("model.layers.0.self_attn.o_proj").weight.detach()
    o_absmax = absmax["model.layers.0.self_attn.o_proj"]
    for kv_head in range(2):
        for d in range(8):
            channels = [q * 8 + d for q in range(4) if q // 2 == kv_head]  # heads 0,1 -> kv 0; 2,3 -> kv 1
            x_max = max(float(o_absmax[c]) for c in channels)
            w_max = max(float(o_proj[:, c].abs().max()) for c in channels)
            expected = x_max ** alpha / w_max ** (1 - alpha)
            assert factors[value][kv_head * 8 + d].item() == pytest.approx(expected, rel=1e-5)


def test_smoothing_rescues_per_tensor_int8_from_an_outlier_channel() -> None:
    """A tiny Llama given LLM-like outlier channels (input norm weight × 300 on two channels,
    the q/k/v columns ÷ 300: the same function): one activation scale per tensor then spends
    its 7 bits on two channels. Smoothing first brings the int8 model back near fp32."""
    model = tiny_model("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[[3, 17]] *= 300.0
            for name in ("q_proj", "k_proj", "v_proj"):
                getattr(layer.self_attn, name).weight[:, [3, 17]] /= 300.0
    token_ids = random_token_ids(2, 32)
    reference = logits(model, token_ids)
    plain = copy.deepcopy(model)
    quantize(plain, "int8-dyn")
    smoothed = copy.deepcopy(model)
    _, report = smoothing.smooth(smoothed, random_token_ids(4, 32, seed=5), alpha=0.5)
    quantize(smoothed, "int8-dyn")

    error_plain = relative_error(logits(plain, token_ids), reference)
    error_smoothed = relative_error(logits(smoothed, token_ids), reference)
    assert error_smoothed < error_plain / 4
    assert report.max_activation_ratio_before > 100 > report.max_activation_ratio_after
    assert report.smoothed_layers == 4 * 7 and report.unsmoothed_layers == []


def test_gpt2_mlp_output_is_listed_unsmoothed_and_bad_alpha_refused() -> None:
    model = tiny_model("gpt2")
    groups, unsmoothed = smoothing.smoothing_groups(model)
    assert unsmoothed == [f"transformer.h.{i}.mlp.c_proj" for i in range(4)]
    with pytest.raises(ValueError, match="alpha must be in \\[0, 1\\]"):
        smoothing.smoothing_factors(model, groups, {}, alpha=1.5)
    with pytest.raises(ValueError, match="calibration must be"):
        smoothing.smooth(model, torch.zeros(5, dtype=torch.long))


def test_int8_dyn_variant_records_its_activation_scaling_and_loads_what_was_built(tmp_path) -> None:
    """materialize_variant('int8-dyn') on a stored tiny Llama: the recipe and load instructions say
    per-token scales after SmoothQuant α = 0.5 with its calibration; loading folds the stored
    factors and gives the model built in memory; tampered factors are refused; int8-dyn-tensor
    (torch's per-tensor layer) records no smoothing."""
    from llmopt_assets.measure.corpus import save_tokens
    from llmopt_assets.models.store import CorruptArtifactError, ModelStore
    from llmopt_assets.profiles import get_profile
    from llmopt_assets.techniques.loading import load_variant
    from llmopt_assets.techniques.recipe import parse
    from llmopt_assets.techniques.variants import materialize_variant
    from llmopt_assets_tests.tiny_models import tiny_tokenizer

    store = ModelStore(tmp_path / "store")
    base = tiny_model("llama")
    store.write_weights("tiny", "base", base, tiny_tokenizer(), recipe=[{"step": "load"}], parent_fingerprint=None)
    calibration_stream = random_token_ids(1, 600, seed=7)[0]
    save_tokens(store.corpus_path("tiny", "calibration"), calibration_stream, {"source": "test"})
    profile = get_profile("smoke", smoothing_samples=3, smoothing_length=40)

    manifest, details = materialize_variant(store, "tiny", parse("int8-dyn"), profile, log=lambda m: None)

    step = next(s for s in manifest.recipe if s["step"] == "quantize")
    assert step["activation_scaling"] == "per-token" and step["smoothquant_alpha"] == 0.5
    assert step["calibration"] == {"samples": 3, "length": 40, "seed": 0}
    assert step["int8_kernel"] == "int_mm" and step["fp32_modules"] == ["down_proj", "fc2", "mlp.c_proj"]
    assert manifest.load["activation_scaling"] == "per-token"
    assert manifest.load["int8_kernel"] == "int_mm"
    assert manifest.load["fp32_modules"] == ["down_proj", "fc2", "mlp.c_proj"]
    assert manifest.load["smoothing"]["alpha"] == 0.5
    assert details["quantize"]["config"]["activation_scaling"] == "per-token"
    assert details["quantize"]["config"]["quantize_lm_head"] is False
    assert details["quantize"]["smoothing"]["smoothed_layers"] == 4 * 7
    # 4 layers x 7 linears, down_proj kept in fp32
    assert details["quantize"]["quantized_modules"] == 4 * 6
    loaded, _ = load_variant(store, manifest)
    # the same variant built by hand: factors from the same windows, folded, then quantized
    from llmopt_assets.measure.corpus import calibration_windows
    expected, _ = load_variant(store, store.manifest("tiny", "base"))  # as stored, SDPA attention
    smoothing.smooth(expected, calibration_windows(calibration_stream, 3, 40, seed=0), 0.5)
    quantize(expected, "int8-dyn", activation_scaling="per-token", int8_kernel="int_mm", fp32_modules=("down_proj",))
    token_ids = random_token_ids(2, 24)
    assert relative_error(logits(loaded, token_ids), logits(expected, token_ids)) < 1e-6

    factors_file = store.artifact_file(manifest, manifest.load["smoothing"]["file"])
    factors_file.write_bytes(smoothing.factors_bytes({"model.layers.0.input_layernorm": torch.ones(32)}))
    with pytest.raises(CorruptArtifactError, match="sha256"):
        load_variant(store, manifest)

    plain, _ = materialize_variant(store, "tiny", parse("int8-dyn-tensor"), profile, log=lambda m: None)
    assert "smoothing" not in plain.load and plain.load["activation_scaling"] == "per-tensor"
    fbgemm, _ = materialize_variant(store, "tiny", parse("int8-dyn-fbgemm"), profile, log=lambda m: None)
    assert fbgemm.load["activation_scaling"] == "per-token" and "int8_kernel" not in fbgemm.load
    assert type(load_variant(store, fbgemm)[0].model.layers[0].mlp.down_proj).__name__ == "TokenScaledDynamicLinear"
    head, head_details = materialize_variant(store, "tiny", parse("int8-dyn-lmhead"), profile, log=lambda m: None)
    assert head.load["quantize_lm_head"] is True and head_details["quantize"]["quantized_modules"] == 4 * 6 + 1
    assert type(load_variant(store, head)[0].lm_head).__name__ == "PerTokenInt8Linear"
