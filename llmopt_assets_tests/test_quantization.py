import copy
import os

import bitsandbytes as bnb
import bitsandbytes.functional as bnb_functional
import pytest
import torch
from scipy.stats import norm
from torch import nn
from transformers.pytorch_utils import Conv1D

from llmopt_assets.techniques.quantization import (
    BNB_SCHEMES,
    bnb_config,
    conv1d_to_linear,
    BlockStraddlingLinear4bit,
    count_quantized_modules,
    dequantize_4bit_flat_blocks,
    full_range_activations_are_exact,
    int_mm_fusion,
    PerTokenInt8Linear,
    quantizable_linear_names,
    quantize,
    weight_bytes,
)
from llmopt_assets_tests.tiny_models import random_token_ids, tiny_model

# Relative logit error ||q - f|| / ||f|| allowed after quantizing a whole tiny model.
# int8: a rounding step of absmax/127 has RMS step/sqrt(12); rows of 32-128 Gaussian entries have
# absmax ~ 2.5-3 sigma, so each operand (weights, activations) is off by ~0.7%, a matmul by ~1%;
# up to 16 matmuls in series add in quadrature to ~4% -> 5%.
# 4-bit: 16 levels per block of 64; the RMS weight error is ~9% (NF4) to ~12% (FP4) of the weights
# for Gaussian weights (QLoRA); the residual stream carries most of the signal (int8 above lands
# at ~0.5%, 1/8 of the quadrature sum), so ~1/8 of sqrt(16) * 12% -> 10%, bounded at 30%.
LOGIT_RELATIVE_TOLERANCE = {"int8": 0.05, "nf4": 0.3, "fp4": 0.3}

# QLoRA, appendix E: the NF4 data type, as printed in the paper.
NF4_PUBLISHED = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def nf4_code_from_normal_quantiles() -> torch.Tensor:
    """QLoRA eq. 4 with an exact zero: 8 positive and 7 negative N(0,1) quantiles, scaled to [-1, 1]."""
    offset = 0.9677083  # (1 - 1/(2*15) + 1 - 1/(2*16)) / 2: the outermost quantile probability
    positive = norm.ppf(torch.linspace(offset, 0.5, 9)[:-1].numpy())
    negative = -norm.ppf(torch.linspace(offset, 0.5, 8)[:-1].numpy())
    values = sorted([*positive.tolist(), 0.0, *negative.tolist()])
    code = torch.tensor(values, dtype=torch.float64)
    return (code / code.abs().max()).float()


def nearest_nf4_dequantized(weight: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    """Blockwise absmax NF4 by brute force: each weight becomes the nearest code times its block's absmax."""
    code = nf4_code_from_normal_quantiles()
    flat = weight.reshape(-1, blocksize)
    absmax = flat.abs().amax(dim=1, keepdim=True)
    nearest = (flat / absmax).unsqueeze(-1).sub(code).abs().argmin(dim=-1)
    return (code[nearest] * absmax).reshape(weight.shape)


def llm_int8_by_hand(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, threshold: float
) -> torch.Tensor:
    """LLM.int8 (Dettmers et al. 2022, eq. 3 and section 3.2), written out step by step."""
    x = x.reshape(-1, x.shape[-1]).double()
    # bitsandbytes quantizes both operands starting from fp16
    x16 = x.half().double()
    w16 = weight.half().double()
    # weights: one absmax scale per output row, int8 codes in [-127, 127]
    w_scale = w16.abs().amax(dim=1)
    w_int8 = torch.round(w16 * 127 / w_scale[:, None])
    # activations: columns holding any |value| >= threshold stay in floating point
    outlier_columns = (x16.abs() >= threshold).any(dim=0) if threshold > 0 else torch.zeros(
        x.shape[1], dtype=torch.bool
    )
    regular = x16.clone()
    regular[:, outlier_columns] = 0
    x_scale = regular.abs().amax(dim=1)
    x_int8 = torch.round(regular * 127 / x_scale[:, None])
    int8_part = (x_int8 @ w_int8.T) * x_scale[:, None] * w_scale[None, :] / 127**2
    # with has_fp16_weights=False only the int8 weights exist, so the outlier columns are
    # multiplied with the dequantized weight columns
    w_dequantized = w_int8 * w_scale[:, None] / 127
    outlier_part = x[:, outlier_columns] @ w_dequantized[:, outlier_columns].T
    return (int8_part + outlier_part + bias.double()).float()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("scheme", BNB_SCHEMES)
def test_quantized_tiny_model_runs_close_to_fp32(arch: str, model, scheme: str) -> None:
    token_ids = random_token_ids(2, 24)
    with torch.no_grad():
        fp32_logits = model(token_ids).logits
    expected_names = quantizable_linear_names(model)

    report = quantize(model, scheme)

    with torch.no_grad():
        output = model(token_ids, labels=token_ids)
    assert torch.isfinite(output.loss)
    assert report.quantized_modules == report.quantizable_modules == len(expected_names)
    assert count_quantized_modules(model) == len(expected_names) > 0
    bnb_class = bnb.nn.Linear8bitLt if scheme == "int8" else bnb.nn.Linear4bit
    for name in expected_names:
        module = model.get_submodule(name)
        assert isinstance(module, bnb_class)
        assert module.weight.dtype == (torch.int8 if scheme == "int8" else torch.uint8)
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    assert report.skipped_modules == ["lm_head"]
    assert relative_error(output.logits, fp32_logits) < LOGIT_RELATIVE_TOLERANCE[scheme]
    assert report.weight_bytes_after < report.weight_bytes_before


def test_tied_lm_head_stays_in_floating_point() -> None:
    model = tiny_model("llama")
    quantize(model, "nf4", skip_modules=())
    assert type(model.lm_head) is nn.Linear
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_skip_modules_by_name_component() -> None:
    model = tiny_model("opt")
    report = quantize(model, "int8", skip_modules=("lm_head", "fc1"))
    fc1_layers = [m for n, m in model.named_modules() if n.endswith(".fc1")]
    assert len(fc1_layers) == 4 and all(type(m) is nn.Linear for m in fc1_layers)
    assert report.quantized_modules == 24 - 4


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="int8.*nf4.*fp4"):
        quantize(tiny_model("gpt2"), "int4")


@pytest.mark.parametrize("threshold", [6.0, 0.0])
def test_linear8bitlt_matches_llm_int8_by_hand(threshold: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48)).eval()
    layer = model[0]
    x = torch.randn(2, 5, 64)
    # systematic outlier features, as LLM.int8 observed: whole columns of large magnitude
    x[..., 3] = 30.0 + torch.rand(2, 5)
    x[..., 17] = -(45.0 + torch.rand(2, 5))
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()

    quantize(model, "int8", int8_threshold=threshold)
    assert isinstance(model[0], bnb.nn.Linear8bitLt)
    with torch.no_grad():
        output = model(x).reshape(-1, 48)

    expected = llm_int8_by_hand(x, weight, bias, threshold)
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-4)
    # the decomposition matters: with the outliers inside the int8 range the result is far worse
    without_decomposition = llm_int8_by_hand(x, weight, bias, threshold=0.0)
    exact = x.reshape(-1, 64) @ weight.T + bias
    if threshold > 0:
        assert relative_error(output, exact) < 0.5 * relative_error(without_decomposition, exact)


def test_nf4_code_is_the_published_one() -> None:
    torch.testing.assert_close(nf4_code_from_normal_quantiles(), torch.tensor(NF4_PUBLISHED))


def test_nf4_weights_are_the_nearest_code_times_block_absmax() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 40), nn.GELU(), nn.Linear(64, 8)).eval()
    originals = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    quantize(model, "nf4")
    for quantized, original in zip([model[0], model[2]], originals):
        assert type(quantized) is bnb.nn.Linear4bit
        dequantized = bnb_functional.dequantize_4bit(quantized.weight.data, quantized.weight.quant_state)
        assert dequantized.shape == original.shape
        torch.testing.assert_close(dequantized, nearest_nf4_dequantized(original))


def test_nf4_layer_whose_rows_straddle_blocks() -> None:
    """40 x 96 weights: 60 blocks of 64 that start mid-row, which bitsandbytes' CPU kernel misreads."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 40)).eval()
    weight, bias = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    x = torch.randn(3, 96)
    quantize(model, "nf4")
    assert isinstance(model[0], BlockStraddlingLinear4bit)
    reference = nearest_nf4_dequantized(weight)
    state = model[0].weight.quant_state
    torch.testing.assert_close(dequantize_4bit_flat_blocks(model[0].weight.data, state), reference)
    with torch.no_grad():
        torch.testing.assert_close(model(x), x @ reference.T + bias)


def test_gpt2_conv1d_quantized_from_its_transpose() -> None:
    model = tiny_model("gpt2")
    conv = model.transformer.h[0].attn.c_attn  # [in=32, out=96]
    original = conv.weight.detach().clone()
    quantize(model, "nf4")
    quantized = model.transformer.h[0].attn.c_attn
    assert (quantized.in_features, quantized.out_features) == (32, 96)
    dequantized = dequantize_4bit_flat_blocks(quantized.weight.data, quantized.weight.quant_state)
    torch.testing.assert_close(dequantized, nearest_nf4_dequantized(original.T.contiguous()))


def test_conv1d_to_linear_computes_the_same_function() -> None:
    torch.manual_seed(0)
    conv = Conv1D(nf=24, nx=16)
    nn.init.normal_(conv.bias)
    x = torch.randn(3, 7, 16)
    linear = conv1d_to_linear(conv)
    assert (linear.in_features, linear.out_features) == (16, 24)
    expected = (x.reshape(-1, 16).double() @ conv.weight.double() + conv.bias.double()).float()
    torch.testing.assert_close(linear(x).reshape(-1, 24), expected)


@pytest.mark.parametrize("scheme", BNB_SCHEMES)
def test_uneven_attention_shapes(scheme: str) -> None:
    """A layer with 3 heads of 8 among layers of 4, as head pruning leaves it."""
    model = tiny_model("opt")
    attention = model.model.decoder.layers[0].self_attn
    kept = torch.arange(24)
    for projection in ("q_proj", "k_proj", "v_proj"):
        old = getattr(attention, projection)
        new = nn.Linear(32, 24)
        new.weight.data, new.bias.data = old.weight.data[kept].clone(), old.bias.data[kept].clone()
        setattr(attention, projection, new)
    out_proj = nn.Linear(24, 32)
    out_proj.weight.data = attention.out_proj.weight.data[:, kept].clone()
    out_proj.bias.data = attention.out_proj.bias.data.clone()
    attention.out_proj = out_proj
    attention.num_heads = 3
    model.eval()
    token_ids = random_token_ids(2, 24)
    with torch.no_grad():
        fp32_logits = model(token_ids).logits

    report = quantize(model, scheme)

    with torch.no_grad():
        logits = model(token_ids).logits
    assert report.quantized_modules == report.quantizable_modules == 24
    assert (attention.q_proj.out_features, attention.out_proj.in_features) == (24, 24)
    assert relative_error(logits, fp32_logits) < LOGIT_RELATIVE_TOLERANCE[scheme]


def test_cpu_4bit_layer_matches_dequantized_matmul() -> None:
    """A shape bitsandbytes' fused CPU kernel can tile; it computes in bf16 where the CPU has it."""
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(128, 64)).eval()
    weight, bias = layer[0].weight.detach().clone(), layer[0].bias.detach().clone()
    x = torch.randn(3, 128)
    report = quantize(layer, "nf4")
    with torch.no_grad():
        output = layer(x)
    fused = bool(bnb_functional.has_avx512bf16())
    assert report.config["cpu_fused_bf16_modules"] == int(fused)
    expected = x.double() @ nearest_nf4_dequantized(weight).double().T + bias.double()
    # bf16 keeps 8 significant bits (relative rounding 2^-9) on inputs and absmax, fp32 far fewer
    tolerance = 2 * 2**-9 if fused else 1e-5
    assert relative_error(output.double(), expected) < tolerance


def test_weight_bytes_counted_by_hand() -> None:
    model = tiny_model("gpt2")
    names = quantizable_linear_names(model)
    shapes = [tuple(model.get_submodule(n).weight.shape) for n in names]  # Conv1D: [in, out]
    weights = sum(i * o for i, o in shapes)
    rows = sum(o for _, o in shapes)  # one bias entry and one int8 row scale per output feature
    report = quantize(model, "int8")
    assert report.linear_weight_bytes_before == 4 * (weights + rows)
    assert report.linear_weight_bytes_after == weights + 4 * rows + 4 * rows
    assert report.weight_bytes_before - report.weight_bytes_after == 3 * weights - 4 * rows
    assert weight_bytes(model) == report.weight_bytes_after

    model = tiny_model("gpt2")
    report = quantize(model, "nf4")
    # two 4-bit codes per byte, an fp32 absmax per 64 weights, a 16-entry fp32 code per layer
    assert report.linear_weight_bytes_after == weights // 2 + 4 * weights // 64 + 4 * rows + 64 * len(names)


def test_report_and_config_record_the_same_settings() -> None:
    report = quantize(tiny_model("llama"), "nf4", compute_dtype=torch.bfloat16)
    config = bnb_config("nf4", compute_dtype=torch.bfloat16)
    assert config.load_in_4bit and not config.load_in_8bit
    assert (config.bnb_4bit_quant_type, config.bnb_4bit_compute_dtype) == ("nf4", torch.bfloat16)
    assert (report.config["quant_type"], report.config["compute_dtype"]) == ("nf4", "bfloat16")
    assert report.config["bitsandbytes_version"] == bnb.__version__
    assert report.to_dict()["module_classes"] == {"Linear4bit": 28}

    int8 = bnb_config("int8")
    assert int8.load_in_8bit and int8.llm_int8_threshold == 6.0
    assert not int8.llm_int8_has_fp16_weight
    assert int8.llm_int8_skip_modules == ["lm_head"]


def test_offline_hub_kernel_notice_is_recorded_not_logged() -> None:
    import logging

    from llmopt_assets.techniques import quantization

    # bitsandbytes' own call: logger.warning("Failed to load CPU gemm_4bit_forward from
    # kernels-community: %s. Please make sure ...", exc)
    record = logging.LogRecord(
        "bitsandbytes.backends.cpu.ops", logging.WARNING, "ops.py", 252,
        "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ...",
        (ModuleNotFoundError("No module named 'kernels'"),), None,
    )
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    saved = quantization._HubKernelNotice.reason
    try:
        assert not logger.filter(record)  # dropped
        assert quantization._HubKernelNotice.reason == "No module named 'kernels'"
        other = logging.LogRecord(logger.name, logging.WARNING, "ops.py", 1, "something else", (), None)
        assert logger.filter(other)  # every other message still goes through
    finally:
        quantization._HubKernelNotice.reason = saved


def dynamic_int8_by_hand(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, levels: int = 127
) -> torch.Tensor:
    """Dynamic int8 linear written out: int8 weights with one symmetric scale per output row,
    activations quantized per tensor to the unsigned range 0..levels (127: the 7-bit range torch
    asks fbgemm for), exact integer products, fp32 output."""
    # weights: the range [-absmax, absmax] spread over the 255 steps of [-128, 127]
    w_scale = (weight.abs().amax(dim=1).double() / 127.5).float()
    w_int8 = torch.clamp(torch.round(weight * (1.0 / w_scale)[:, None]), -128, 127)
    # activations: [min(x, 0), max(x, 0)] onto 0..127, zero point rounded to an integer
    low, high = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    x_scale = (high - low) / levels
    zero_point = round(-low / x_scale)
    x_uint = torch.clamp(torch.round(x / x_scale) + zero_point, 0, levels)
    accumulated = (x_uint - zero_point).double() @ w_int8.double().T  # exact in int32 and fp64
    return (accumulated * x_scale * w_scale.double()[None, :] + bias.double()).float()


def test_dynamic_int8_linear_matches_the_scheme_by_hand() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 160))
    linear = model[0]
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    x = torch.randn(9, 96) * 3 + 0.5  # asymmetric range: the zero point is not at the middle

    report = quantize(model, "int8-dyn", skip_modules=())

    with torch.no_grad():
        output = model(x)
    expected = dynamic_int8_by_hand(x, weight, bias)
    assert relative_error(output, expected) < 1e-5
    # not the float layer: quantization moves the output by ~1%, 1000x the tolerance above
    assert relative_error(torch.nn.functional.linear(x, weight, bias), expected) > 1e-3
    assert report.module_classes == {"DynamicQuantizedLinear": 1}
    assert count_quantized_modules(model) == 1
    # int8 codes, per-row scale (float64) and zero point (int64), fp32 bias
    assert report.linear_weight_bytes_after == 96 * 160 + 160 * 8 + 160 * 8 + 160 * 4
    assert report.linear_weight_bytes_before == 4 * (96 * 160 + 160)


def test_per_token_dynamic_int8_is_the_by_hand_scheme_on_rows_scaled_to_one() -> None:
    """Each token divided by its max |x|, the per-tensor scheme by hand on the result, each output
    row multiplied back, the bias added last; and a token 300x louder than the rest no longer
    costs the others their resolution, as it does with one scale per tensor."""
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 64) * 0.1, torch.randn(48)
    x = torch.randn(10, 64) + 0.3
    x[4] *= 300.0  # an outlier token, like an attention sink's hidden state
    linear = nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    per_token, per_tensor = nn.Sequential(linear), nn.Sequential(copy.deepcopy(linear))

    quantize(per_token, "int8-dyn", skip_modules=(), activation_scaling="per-token")
    quantize(per_tensor, "int8-dyn", skip_modules=())

    token_max = x.abs().amax(dim=1, keepdim=True)
    levels = 255 if full_range_activations_are_exact() else 127
    expected = dynamic_int8_by_hand(x / token_max, weight, torch.zeros(48), levels) * token_max + bias
    with torch.no_grad():
        assert relative_error(per_token(x), expected) < 1e-5
        exact = torch.nn.functional.linear(x, weight, bias)
        quiet = [row for row in range(10) if row != 4]
        assert relative_error(per_token(x)[quiet], exact[quiet]) * 10 < relative_error(per_tensor(x)[quiet], exact[quiet])
    with pytest.raises(ValueError, match="applies to int8-dyn only"):
        quantize(nn.Sequential(nn.Linear(64, 48)), "int8", activation_scaling="per-token")


@pytest.mark.parametrize("arch", ["gpt2", "opt", "llama"])
def test_dynamic_int8_tiny_model_runs_close_to_fp32(arch: str) -> None:
    model = tiny_model(arch)
    token_ids = random_token_ids(2, 24)
    with torch.no_grad():
        fp32_logits = model(token_ids).logits
    expected_names = quantizable_linear_names(model)

    report = quantize(model, "int8-dyn")

    with torch.no_grad():
        logits = model(token_ids).logits
    assert report.quantized_modules == report.quantizable_modules == len(expected_names) > 0
    assert count_quantized_modules(model) == len(expected_names)
    assert report.config["engine"] == torch.backends.quantized.engine
    # 7-bit per-tensor activations step by range/127: ~2x the int8 budget above for Gaussian
    # tiny models (real LLM activations with outlier channels fare worse: see benchmarks/README)
    assert relative_error(logits, fp32_logits) < 2 * LOGIT_RELATIVE_TOLERANCE["int8"]
    assert report.weight_bytes_after < report.weight_bytes_before


def per_token_int8_by_hand(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-token int8 linear written out in fp64: weight codes round(w / s_row), s_row = max |row|
    / 127; activation codes round(x / s_token), s_token = max |token| / 127; exact integer sums;
    y = sums · s_token · s_row + bias."""
    x, weight = x.double(), weight.double()
    s_row = weight.abs().amax(dim=1) / 127
    s_token = x.abs().amax(dim=1) / 127
    w_codes = torch.round(weight / s_row[:, None])
    x_codes = torch.round(x / s_token[:, None])
    assert w_codes.abs().max() <= 127 and x_codes.abs().max() <= 127
    sums = x_codes @ w_codes.T  # integers below 2^53: exact in fp64
    return sums * s_token[:, None] * s_row[None, :] + bias.double()


IN_CI = os.environ.get("LLMOPT_CI") == "1"  # .ci/run installs g++: there the fused path must run


@pytest.mark.parametrize("fusion", ["eager", "inductor"])
def test_per_token_int8_linear_is_the_fp64_by_hand_scheme(fusion: str) -> None:
    """PerTokenInt8Linear (torch._int_mm, eager or fused by torch.compile) against the scheme in
    fp64 by hand, to 1e-6 of the output's norm (fp32 scale products; a code at an exact .5 tie
    could round the other way in fp32, which these seeded inputs do not hit); a 300x outlier token
    leaves the other tokens' error at the int8 budget (~1% for 64-wide Gaussian rows)."""
    if fusion == "inductor" and int_mm_fusion() != "inductor":
        if IN_CI:
            pytest.fail("no C++ compiler found for torch.compile: .ci/run installs g++")
        pytest.skip("no C++ compiler on this machine: the fused path cannot run (see int_mm_fusion)")
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(3, 10, 64) + 0.3
    x[1, 4] *= 300.0
    layer = PerTokenInt8Linear(linear, fusion)
    with torch.inference_mode():
        output = layer(x)
    expected = per_token_int8_by_hand(x.reshape(30, 64), linear.weight.detach(), linear.bias.detach()).reshape(3, 10, 48)
    assert output.shape == (3, 10, 48) and output.dtype == torch.float32
    assert relative_error(output.double(), expected) < 1e-6
    exact = linear(x).detach()
    quiet = torch.ones(3, 10, dtype=torch.bool)
    quiet[1, 4] = False
    assert relative_error(output[quiet], exact[quiet]) < 0.02
    with pytest.raises(TypeError, match="float32 activations"):
        layer(x.bfloat16())


def test_int_mm_kernel_keeps_fp32_modules_and_quantizes_a_tied_lm_head_when_asked() -> None:
    """int8-dyn on torch._int_mm: the MLP output kept in fp32 by a dotted-suffix name, lm_head
    (tied to the input embedding in the tiny Llama) quantized as a copy only when asked; the
    options are refused where they make no sense."""
    model = tiny_model("llama")
    tied = model.get_input_embeddings().weight
    assert model.lm_head.weight is tied
    token_ids = random_token_ids(2, 24)
    with torch.no_grad():
        fp32_logits = model(token_ids).logits

    report = quantize(
        model, "int8-dyn", activation_scaling="per-token", int8_kernel="int_mm",
        fp32_modules=("mlp.down_proj",), quantize_lm_head=True,
    )

    layers = model.config.num_hidden_layers
    assert report.quantized_modules == 6 * layers + 1
    assert all(type(layer.mlp.down_proj) is nn.Linear for layer in model.model.layers)
    assert isinstance(model.lm_head, PerTokenInt8Linear) and isinstance(model.model.layers[0].self_attn.q_proj, PerTokenInt8Linear)
    assert model.get_input_embeddings().weight is tied  # the embedding lookup stays fp32
    assert report.config["int8_kernel"] == "int_mm" and report.config["quantize_lm_head"] is True
    assert report.config["fusion"] == int_mm_fusion()
    with torch.no_grad():
        assert relative_error(model(token_ids).logits, fp32_logits) < LOGIT_RELATIVE_TOLERANCE["int8"]
    with pytest.raises(ValueError, match="quantize_lm_head needs int8_kernel='int_mm'"):
        quantize(tiny_model("llama"), "int8-dyn", activation_scaling="per-token", quantize_lm_head=True)
    with pytest.raises(ValueError, match="quantizes activations per token"):
        quantize(tiny_model("llama"), "int8-dyn", int8_kernel="int_mm")
    with pytest.raises(ValueError, match="int8 kernel 'int_mm': applies to int8-dyn only"):
        quantize(tiny_model("llama"), "nf4", int8_kernel="int_mm")
    with pytest.raises(ValueError, match="unknown int8 kernel"):
        quantize(tiny_model("llama"), "int8-dyn", int8_kernel="onednn")


def test_int_mm_without_a_cxx_compiler_runs_eagerly_and_says_so(monkeypatch, caplog) -> None:
    """No C++ compiler for inductor: the int_mm layers run their passes as torch ops, the same
    outputs as the fp64 by-hand scheme, a warning names the fix, the report records 'eager'."""
    import llmopt_assets.techniques.quantization as quantization

    monkeypatch.setattr(quantization.shutil, "which", lambda name: None)
    int_mm_fusion.cache_clear()
    try:
        with caplog.at_level("WARNING", logger=quantization.__name__):
            model = nn.Sequential(nn.Linear(64, 48))
            report = quantize(model, "int8-dyn", skip_modules=(), activation_scaling="per-token", int8_kernel="int_mm")
        assert report.config["fusion"] == "eager" and model[0].fusion == "eager"
        assert "apt-get install g++" in caplog.text
    finally:
        int_mm_fusion.cache_clear()
    x = torch.randn(20, 64)
    linear = nn.Linear(64, 48)
    layer = PerTokenInt8Linear(linear)  # the default: eager
    with torch.no_grad():
        expected = per_token_int8_by_hand(x, linear.weight, linear.bias)
        assert relative_error(layer(x).double(), expected) < 1e-6


def test_dynamic_int8_refuses_cuda_and_half_compute() -> None:
    with pytest.raises(ValueError, match="CPU int8 kernels.*'int8' \\(bitsandbytes"):
        quantize(tiny_model("llama"), "int8-dyn", device="cuda")
    with pytest.raises(ValueError, match="CPU int8 kernels.*'int8' \\(bitsandbytes"):
        quantize(tiny_model("llama"), "int8-dyn", device="cuda", activation_scaling="per-token", int8_kernel="int_mm")
    with pytest.raises(ValueError, match="float32 activations"):
        quantize(tiny_model("llama"), "int8-dyn", compute_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="not a bitsandbytes scheme"):
        bnb_config("int8-dyn")


def test_bf16_casts_every_weight_and_stays_close_to_fp32() -> None:
    model = tiny_model("llama")
    token_ids = random_token_ids(2, 24)
    with torch.no_grad():
        fp32_logits = model(token_ids).logits
    # parameters (the tied embedding once) and the rotary frequencies buffer
    before = sum(t.numel() for t in [*model.parameters(), *model.buffers()])

    report = quantize(model, "bf16")

    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert report.quantized_modules == report.quantizable_modules == 28
    assert report.skipped_modules == []
    # two bytes a weight instead of four, tied embedding counted once
    assert report.weight_bytes_before == 4 * before
    assert report.weight_bytes_after == 2 * before
    with torch.no_grad():
        logits = model(token_ids).logits.float()
    # bf16 rounds to 8 significant bits (2^-9 relative) at every op
    assert relative_error(logits, fp32_logits) < 0.05
