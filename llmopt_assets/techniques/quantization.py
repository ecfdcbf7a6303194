"""bitsandbytes quantization of an already loaded model: LLM.int8 and 4-bit NF4 / FP4.

The paper's "8-Bit" and "4-Bit" variants load a model with a bitsandbytes config. Our variants may
be head-pruned first (a different head count per layer), which no config can rebuild, so we
quantize in memory instead: every linear layer is swapped for a ``bnb.nn.Linear8bitLt`` (LLM.int8,
Dettmers et al. 2022: row-wise absmax int8 weights, vector-wise int8 activations, activation
columns with a value above the outlier threshold kept in floating point) or ``bnb.nn.Linear4bit``
(QLoRA, Dettmers et al. 2023: blockwise absmax 4-bit NF4 / FP4 codes, block size 64), and the
weights are quantized right away on the target device.

``bnb_config`` gives the equivalent ``BitsAndBytesConfig`` for the ``from_pretrained`` path, so a
hub model quantized on load and a pruned model quantized here are recorded the same way.

Two schemes beyond the paper aim at the hardware users have, a CPU (issue 15):

- ``int8-dyn``: torch's dynamic int8 linear layers (``torch.ao.nn.quantized.dynamic.Linear``,
  fbgemm / oneDNN kernels): int8 weights with one symmetric scale per output row
  (absmax / 127.5), activations quantized per tensor at run time (asymmetric uint8 over
  [min(x, 0), max(x, 0)], 7-bit range because fbgemm's kernels reserve a bit against overflow),
  int32 accumulation, fp32 output. CPU only: torch has no CUDA kernel for these layers.
- ``bf16``: the whole model cast to bfloat16, weights and compute (norms and embeddings too,
  as ``from_pretrained(dtype=torch.bfloat16)`` would load it). It sits in the quantization family
  of the recipes: one precision per variant, applied at load over the parent's weights.
"""

import functools
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as quantized_dynamic
from torch.ao.quantization import per_channel_dynamic_qconfig
from transformers import BitsAndBytesConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D


# Bump with any change to how bitsandbytes quantization is applied (int8, nf4, fp4 variants):
# Dagster then marks what it made stale.
CODE_VERSION = "3"  # 2: int8-dyn with SmoothQuant factors; 3: int8-dyn on torch._int_mm, fused (issue 15)


class _HubKernelNotice(logging.Filter):
    """Catches bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community".

    On CPUs with AVX512-BF16, importing bitsandbytes tries to download a fused 4-bit GEMM from the
    Hugging Face hub (the `kernels` package, repo kernels-community/quantization-bitsandbytes).
    Offline that cannot work (no hub; `kernels` would only try the same download), so bitsandbytes
    falls back to the fused bf16 4-bit kernel it ships: the cost is speed only, on that one path,
    and every number here was measured on the shipped kernel. The warning is dropped and its
    reason recorded in each 4-bit report instead (`cpu_hub_gemm_4bit`)."""

    reason: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if "gemm_4bit_forward" in str(record.msg):
            _HubKernelNotice.reason = str(record.args[0]) if record.args else record.getMessage()
            return False
        return True


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_HubKernelNotice())
import bitsandbytes as bnb  # noqa: E402  (after the filter: the notice is logged at import)

# int8-dyn's activation scales, a recorded choice of each recipe (issue 15): torch's one scale
# per tensor as is, or one per token (TokenScaledDynamicLinear). SmoothQuant factors may be folded
# into the weights before either (techniques/smoothing.py).
PER_TENSOR, PER_TOKEN = "per-tensor", "per-token"
ACTIVATION_SCALINGS = (PER_TENSOR, PER_TOKEN)
# int8-dyn's kernel, another recorded choice (issue 15): fbgemm's dynamic linear (torch.ao's layer;
# per-token scales by dividing each token first: TokenScaledDynamicLinear), or int8 x int8 ->
# int32 through torch._int_mm with symmetric per-token activation codes (PerTokenInt8Linear), its
# quantize prologue and dequantize epilogue fused by torch.compile where a C++ compiler is found.
FBGEMM, INT_MM = "fbgemm", "int_mm"
INT8_KERNELS = (FBGEMM, INT_MM)
# The recorded int8-dyn options of a recipe step, passed as they are to ``quantize`` (variants.py
# copies them into the manifest's load instructions, loading.py reads them back).
INT8_DYN_OPTIONS = ("activation_scaling", "int8_kernel", "fp32_modules", "quantize_lm_head")
BNB_SCHEMES = ("int8", "nf4", "fp4")
SCHEMES = (*BNB_SCHEMES, "int8-dyn", "bf16")
HALF_DTYPES = (torch.bfloat16, torch.float16)
_CLASS_NAMES = {quantized_dynamic.Linear: "DynamicQuantizedLinear"}  # its own name is "Linear"
BLOCKSIZE_4BIT = 64  # QLoRA's block size for the absmax constants (bitsandbytes' default)
_CPU_FUSED_BLOCK_N = 32  # output rows per tile in bitsandbytes' CPU weight packing


@dataclass(frozen=True)
class QuantizationReport:
    scheme: str
    quantized_modules: int
    quantizable_modules: int
    module_classes: dict[str, int]  # class name -> how many modules of it the model now holds
    skipped_modules: list[str]  # linear layers left in floating point (lm_head, tied embeddings)
    config: dict[str, object]
    weight_bytes_before: int  # parameters + buffers + quantization constants, tied tensors once
    weight_bytes_after: int
    linear_weight_bytes_before: int  # the replaced layers only
    linear_weight_bytes_after: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def bnb_config(
    scheme: str,
    *,
    compute_dtype: torch.dtype = torch.float32,
    skip_modules: Sequence[str] = ("lm_head",),
    int8_threshold: float = 6.0,
    double_quant: bool = False,
) -> BitsAndBytesConfig:
    """The from_pretrained equivalent of ``quantize(model, scheme, ...)`` with the same arguments."""
    _check_scheme(scheme)
    if scheme not in BNB_SCHEMES:
        raise ValueError(f"{scheme!r} is not a bitsandbytes scheme ({BNB_SCHEMES}): no BitsAndBytesConfig")
    if scheme == "int8":
        return BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_threshold=int8_threshold,
            llm_int8_has_fp16_weight=False,
            llm_int8_skip_modules=list(skip_modules),
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=scheme,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=double_quant,
        llm_int8_skip_modules=list(skip_modules),
    )


def quantize(
    model: PreTrainedModel,
    scheme: str,
    *,
    compute_dtype: torch.dtype = torch.float32,
    skip_modules: Sequence[str] = ("lm_head",),
    int8_threshold: float = 6.0,
    double_quant: bool = False,
    cpu_fused_4bit: bool = True,
    device: str | torch.device = "cpu",
    activation_scaling: str = PER_TENSOR,
    int8_kernel: str = FBGEMM,
    fp32_modules: Sequence[str] = (),
    quantize_lm_head: bool = False,
) -> QuantizationReport:
    """Replace the model's linear layers by bitsandbytes ones, in place, and quantize them on ``device``.

    GPT-2's Conv1D layers (weight stored [in, out]) are converted too. Linear layers named in
    ``skip_modules`` (a full dotted name or one component of it), the output embedding and any
    layer sharing its weight with another module (tied embeddings) stay in floating point, as in
    transformers' bitsandbytes integration. The rest of the model is moved to ``device``.
    ``double_quant`` quantizes the 4-bit absmax constants again (QLoRA's double quantization).

    On CPUs with AVX512-BF16, bitsandbytes runs 4-bit layers in eval mode without grad through a
    fused kernel that computes in bfloat16 (activations and absmax cast to bf16) whatever
    ``compute_dtype`` says, and only works for in_features % 64 == 0 and out_features % 32 == 0.
    ``cpu_fused_4bit=False``, or a layer of another shape, takes the dequantize-then-matmul path in
    ``compute_dtype`` instead; the report counts the layers of each kind.

    LLM.int8 decomposes activations only in eval mode: in training mode bitsandbytes dequantizes
    the weights on CPU and runs a plain floating point matmul.

    ``int8-dyn`` needs ``device='cpu'`` and fp32 compute; its ``activation_scaling`` is
    ``per-tensor`` (torch's layer as is) or ``per-token``; its ``int8_kernel`` is ``fbgemm``
    (torch's layer; per-token through TokenScaledDynamicLinear) or ``int_mm`` (per-token only:
    PerTokenInt8Linear). ``fp32_modules`` are kept in fp32 like ``skip_modules`` (a recorded
    mixed-precision choice); ``quantize_lm_head`` quantizes the output embedding too (int_mm only,
    a copy when it is tied to the input embedding). ``bf16`` casts the whole model and ignores
    ``compute_dtype`` (see the module docstring).
    """
    _check_scheme(scheme)
    if activation_scaling not in ACTIVATION_SCALINGS:
        raise ValueError(f"unknown activation scaling {activation_scaling!r}; known: {ACTIVATION_SCALINGS}")
    if int8_kernel not in INT8_KERNELS:
        raise ValueError(f"unknown int8 kernel {int8_kernel!r}; known: {INT8_KERNELS}")
    int8_dyn_options = [
        f"{name} {value!r}" for name, value, default in (
            ("activation scaling", activation_scaling, PER_TENSOR), ("int8 kernel", int8_kernel, FBGEMM),
            ("quantize_lm_head", quantize_lm_head, False),
        ) if value != default
    ]
    if int8_dyn_options and scheme != "int8-dyn":
        raise ValueError(f"{', '.join(int8_dyn_options)}: applies to int8-dyn only, not {scheme!r}")
    if int8_kernel == INT_MM and activation_scaling != PER_TOKEN:
        raise ValueError("the int_mm kernel quantizes activations per token: use activation_scaling='per-token'")
    if quantize_lm_head and int8_kernel != INT_MM:
        raise ValueError("quantize_lm_head needs int8_kernel='int_mm' (fbgemm's layer has no per-token scales)")
    skip_modules = (*skip_modules, *fp32_modules)
    device = torch.device(device)
    if scheme == "int8-dyn":
        _check_int8_dynamic_fits(device, compute_dtype)
    fusion = int_mm_fusion() if int8_kernel == INT_MM else None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
    if scheme == "int8":
        _silence_fp16_cast_warning()

    names = quantizable_linear_names(model, skip_modules)
    if quantize_lm_head:
        names += _output_embedding_names(model)
    skipped = [
        name for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and name not in names
    ]
    bytes_before = weight_bytes(model)
    modules = dict(model.named_modules())
    linear_before = sum(weight_bytes(modules[name]) for name in names)

    if scheme == "bf16":
        model.to(device=device, dtype=torch.bfloat16)
        names_to_replace: list[str] = []
    else:
        model.to(device)
        names_to_replace = names
    for name in names_to_replace:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        original = getattr(parent, child_name)
        linear = conv1d_to_linear(original) if isinstance(original, Conv1D) else original
        if scheme == "int8-dyn":
            if int8_kernel == INT_MM:
                quantized = PerTokenInt8Linear(linear, fusion)
            elif activation_scaling == PER_TOKEN:
                quantized = TokenScaledDynamicLinear(linear)
            else:
                quantized = dynamic_int8_linear(linear)
            setattr(parent, child_name, quantized.train(original.training))
            del original, linear
            continue
        bias = None if linear.bias is None else linear.bias.detach()
        quantized = _quantized_linear(
            linear.weight.detach().contiguous(), bias, scheme,
            compute_dtype, int8_threshold, double_quant, cpu_fused_4bit, device,
        )
        # A fresh module is in training mode; on CPU that would switch LLM.int8 off (see above).
        quantized.train(original.training)
        setattr(parent, child_name, quantized)
        del original, linear

    modules = dict(model.named_modules())
    classes: dict[str, int] = {}
    for module in modules.values():
        for quantized_class in QUANTIZED_MODULE_TYPES:
            if isinstance(module, quantized_class):
                name = _CLASS_NAMES.get(quantized_class, quantized_class.__name__)
                classes[name] = classes.get(name, 0) + 1
    if scheme == "bf16":
        classes["Linear(bfloat16)"] = count_quantized_modules(model)
        skipped = []  # the cast reaches every layer, the output embedding included
    config: dict[str, object] = {
        "method": "bitsandbytes",
        "scheme": scheme,
        "device": str(device),
        "bitsandbytes_version": bnb.__version__,
        "skip_modules": list(skip_modules),
    }
    if scheme in ("int8-dyn", "bf16"):
        config = {"method": "torch", "scheme": scheme, "device": str(device),
                  "torch_version": torch.__version__, "skip_modules": list(skip_modules)}
    if scheme == "int8-dyn" and int8_kernel == INT_MM:
        config |= {
            "int8_kernel": INT_MM,
            "fusion": fusion,
            "weights": "int8, symmetric, one scale per output row (absmax / 127)",
            "activation_scaling": activation_scaling,
            "activation_bits": 8,
            "activations": "int8, symmetric, one scale per token (max |x| / 127) chosen at run time",
            "accumulation": "int32 (torch._int_mm), then times token scale x row scale, plus bias, in fp32",
            "fp32_modules": list(fp32_modules),
            "quantize_lm_head": quantize_lm_head,
            "compute_dtype": "float32",
        }
    elif scheme == "int8-dyn":
        config |= {
            "int8_kernel": FBGEMM,
            "engine": torch.backends.quantized.engine,
            "weights": "int8, symmetric, one scale per output row (absmax / 127.5)",
            "fp32_modules": list(fp32_modules),
            "activation_scaling": activation_scaling,
            "activation_bits": 8 if activation_scaling == PER_TOKEN and full_range_activations_are_exact() else 7,
            "activations": (
                "uint8 (7-bit range), affine, one scale per tensor chosen at run time"
                if activation_scaling == PER_TENSOR else
                f"each token divided by its max |x|, then uint8 "
                f"({'8-bit' if full_range_activations_are_exact() else '7-bit'} range) affine over "
                "the tensor (one scale per token in effect), output rows multiplied back"
            ),
            "compute_dtype": "float32",
        }
    elif scheme == "bf16":
        config |= {"skip_modules": [], "compute_dtype": "bfloat16"}
    elif scheme == "int8":
        config |= {"int8_threshold": int8_threshold, "has_fp16_weights": False}
    else:
        config |= {
            "quant_type": scheme,
            "compute_dtype": str(compute_dtype).removeprefix("torch."),
            "blocksize": BLOCKSIZE_4BIT,
            "double_quant": double_quant,
            "cpu_fused_bf16_modules": sum(
                _uses_cpu_fused_4bit(module) for module in modules.values()
            ) if device.type == "cpu" else 0,
            "cpu_hub_gemm_4bit": (
                f"not loaded ({_HubKernelNotice.reason}): bitsandbytes' shipped fused kernel ran"
                if _HubKernelNotice.reason else "no failure logged (loaded, or not tried: no AVX512-BF16)"
            ),
            "block_straddling_modules": sum(
                isinstance(module, BlockStraddlingLinear4bit) for module in modules.values()
            ),
        }
    return QuantizationReport(
        scheme=scheme,
        quantized_modules=count_quantized_modules(model),
        quantizable_modules=len(names),
        module_classes=classes,
        skipped_modules=skipped,
        config=config,
        weight_bytes_before=bytes_before,
        weight_bytes_after=weight_bytes(model),
        linear_weight_bytes_before=linear_before,
        linear_weight_bytes_after=sum(weight_bytes(modules[name]) for name in names),
    )


def quantizable_linear_names(model: nn.Module, skip_modules: Sequence[str] = ("lm_head",)) -> list[str]:
    """Dotted names of the nn.Linear / Conv1D layers that ``quantize`` replaces, in model order.
    A skip entry is a full dotted name, one component of it, or a dotted suffix ('mlp.c_proj')."""
    output_embeddings = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    embedding_weights = {
        id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)
    }
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)) or isinstance(module, QUANTIZED_MODULE_TYPES):
            continue
        skipped_by_name = any(
            name == skip or skip in name.split(".") or name.endswith("." + skip) for skip in skip_modules
        )
        tied = id(module.weight) in embedding_weights
        if skipped_by_name or tied or module is output_embeddings:
            continue
        names.append(name)
    return names


def _output_embedding_names(model: nn.Module) -> list[str]:
    output_embeddings = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    names = [name for name, module in model.named_modules() if module is output_embeddings]
    if not names or not isinstance(output_embeddings, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear output embedding to quantize")
    return names


def recorded_options(step: dict) -> dict[str, object]:
    """The int8-dyn options a recipe step or a manifest's load instructions record, as ``quantize``
    keyword arguments (absent ones keep quantize's defaults, as variants built before them ran)."""
    options = {name: step[name] for name in INT8_DYN_OPTIONS if name in step}
    if "fp32_modules" in options:
        options["fp32_modules"] = tuple(options["fp32_modules"])
    return options


def count_quantized_modules(model: nn.Module) -> int:
    """How many linear layers are quantized: bitsandbytes Linear8bitLt / Linear4bit and torch
    dynamic int8 layers, plus the quantizable linear layers whose weights are half precision
    (the bf16 scheme)."""
    replaced = sum(isinstance(module, QUANTIZED_MODULE_TYPES) for module in model.modules())
    modules = dict(model.named_modules())
    half = sum(
        modules[name].weight.dtype in HALF_DTYPES for name in quantizable_linear_names(model)
    )
    return replaced + half


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by parameters, buffers and bitsandbytes' quantization constants; tied tensors once."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def add(tensor: torch.Tensor | None) -> None:
        nonlocal total
        if tensor is None or tensor.device.type == "meta":
            return
        key = (tensor.untyped_storage().data_ptr(), tensor.data_ptr())
        if key in seen:
            return
        seen.add(key)
        total += tensor.numel() * tensor.element_size()

    for tensor in [*module.parameters(), *module.buffers()]:
        add(tensor)
    for submodule in module.modules():
        if isinstance(submodule, quantized_dynamic.Linear):
            # Packed by fbgemm, outside parameters and buffers: int8 codes, per-row scales and
            # zero points (as torch stores them: float64 and int64), the fp32 bias.
            weight = submodule.weight()
            total += weight.numel() * weight.element_size()
            if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                total += weight.q_per_channel_scales().numel() * 8
                total += weight.q_per_channel_zero_points().numel() * 8
            else:
                total += 8 + 8
            add(submodule.bias())
        elif isinstance(submodule, bnb.nn.Linear8bitLt):
            # The row scales live on the parameter until the first forward, then on the state.
            add(getattr(submodule.weight, "SCB", None))
            add(submodule.state.SCB)
        elif isinstance(submodule, bnb.nn.Linear4bit) and submodule.weight.quant_state is not None:
            state = submodule.weight.quant_state
            add(state.absmax)
            add(state.code)
            if state.nested:
                add(state.state2.absmax)
                add(state.state2.code)
                add(state.offset)
    return total


def _uses_cpu_fused_4bit(module: nn.Module) -> bool:
    return isinstance(module, bnb.nn.Linear4bit) and bool(module.support_avx512bf16_for_cpu)


def dynamic_int8_linear(linear: nn.Linear) -> quantized_dynamic.Linear:
    """torch's dynamic int8 layer for ``linear``: per-row symmetric int8 weights (observer
    ``per_channel_dynamic_qconfig``), activations quantized per tensor when it runs."""
    linear.qconfig = per_channel_dynamic_qconfig
    with warnings.catch_warnings():
        # torch.ao.quantization's eager API warns that it moves to torchao; the kernels are
        # torch's own and run in 2.13 (recorded in the report's torch_version).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        quantized = quantized_dynamic.Linear.from_float(linear)
    del linear.qconfig
    return quantized


@functools.cache
def full_range_activations_are_exact() -> bool:
    """Whether this CPU's dynamic int8 kernel takes activations over the whole uint8 range.

    torch calls fbgemm with ``reduce_range=True`` (7-bit activations) because without VNNI the
    u8 x s8 products are summed in pairs into int16 (vpmaddubsw), which saturates when both are
    near their maxima (255 · 127 · 2 > 32767). Checked on the kernel itself, once: every
    activation code 255 against every weight code 127 must come out exact."""
    linear = nn.Linear(256, 64, bias=False)
    with torch.no_grad():
        linear.weight.fill_(1.0)
    x = torch.full((8, 256), 2.0)
    x[:, 0] = 0.0  # the range [0, 2]: codes 0 and 255
    quantized = dynamic_int8_linear(linear)
    output = torch.ops.quantized.linear_dynamic(x, quantized._packed_params._packed_params, reduce_range=False)
    exact = x @ quantized.weight().dequantize().T  # 2.0 and 0.0 are exact codes: no rounding here
    return bool(((output - exact).abs() / exact).max() < 1e-3)


class TokenScaledDynamicLinear(nn.Module):
    """torch's dynamic int8 linear with one activation scale per token instead of one per tensor.

    A linear map commutes with scaling each input row: W x_t = a_t · W (x_t / a_t). Dividing every
    token by its own max |x| before fbgemm's per-tensor quantizer, and multiplying each output row
    back, gives every token the whole code range, as per-token quantization does (a token with a
    100x outlier no longer flattens the others to a few codes), on the same fast kernel. The bias
    is added after the rescaling. Activations use all 8 bits where the kernel is exact with them
    (``full_range_activations_are_exact``), else torch's 7."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        unbiased = nn.Linear(linear.in_features, linear.out_features, bias=False, device="meta")
        unbiased.weight = nn.Parameter(linear.weight.detach(), requires_grad=False)
        self.quantized = dynamic_int8_linear(unbiased)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.reduce_range = not full_range_activations_are_exact()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        token_max = torch.linalg.vector_norm(x, float("inf"), dim=-1, keepdim=True).clamp_min_(1e-30)
        packed = self.quantized._packed_params._packed_params
        output = torch.ops.quantized.linear_dynamic(x / token_max, packed, reduce_range=self.reduce_range)
        output = output.mul_(token_max)
        return output if self.bias is None else output.add_(self.bias)


def per_token_int8_matmul(
    rows: torch.Tensor, weight_t: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """rows [tokens, in] fp32 times the int8 weight codes ``weight_t`` [in, out] (one symmetric
    scale per output column here, per output row of the layer): each token quantized to int8 with
    its own scale max |x| / 127, int32 accumulation, y = acc · s_token · s_row (+ bias)."""
    token_scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-30) / 127.0
    codes = torch.round(rows / token_scale).to(torch.int8)  # |rows / scale| <= 127: no clamp needed
    output = torch._int_mm(codes, weight_t).float() * token_scale * weight_scale
    return output if bias is None else output + bias


EAGER, INDUCTOR = "eager", "inductor"


@functools.cache
def int_mm_fusion() -> str:
    """How PerTokenInt8Linear runs its elementwise passes here: ``inductor`` (torch.compile fuses
    the per-token quantize into one pass and the int32 -> fp32 rescale into another; inductor
    writes C++ and needs a compiler) or, where no C++ compiler is found, ``eager`` (the same
    arithmetic in separate torch ops: the same outputs, slower; the reason is logged and the
    quantization report records which ran). ``LLMOPT_INT8_FUSION=eager`` asks for eager."""
    if os.environ.get("LLMOPT_INT8_FUSION") == EAGER:
        return EAGER
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None and shutil.which("g++") is None:
        logging.getLogger(__name__).warning(
            "int8-dyn: no C++ compiler (%s or g++) on PATH, so torch.compile cannot fuse the int_mm "
            "kernel's quantize and rescale passes: running them eagerly (same outputs, slower). "
            "Install one (Debian: apt-get install g++) for the fused path.", compiler)
        return EAGER
    return INDUCTOR


@functools.cache
def _compiled_per_token_int8_matmul():
    # dynamic=True: one graph for every layer shape and window length (no recompiles per window).
    return torch.compile(per_token_int8_matmul, dynamic=True)


class PerTokenInt8Linear(nn.Module):
    """A linear layer as int8 x int8 -> int32 products through ``torch._int_mm``.

    Weights: int8 codes, one symmetric scale per output row (absmax / 127). Activations: each
    token quantized at run time with its own symmetric scale (max |x| / 127), so an outlier token
    costs the others nothing. Output: the int32 sums times token scale times row scale, plus the
    bias, in fp32 (per_token_int8_matmul). The quantize and rescale passes around the kernel are
    what eats an int8 kernel's gain on a CPU when each is its own torch op; ``fusion='inductor'``
    compiles them (see int_mm_fusion)."""

    def __init__(self, linear: nn.Linear, fusion: str = EAGER):
        super().__init__()
        if fusion not in (EAGER, INDUCTOR):
            raise ValueError(f"unknown fusion {fusion!r}; known: {(EAGER, INDUCTOR)}")
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp_min(1e-30) / 127.0
        codes = torch.round(weight / scale[:, None]).to(torch.int8)
        self.register_buffer("weight_t", codes.t().contiguous())  # [in, out]: _int_mm's layout
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.fusion = fusion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            raise TypeError(f"PerTokenInt8Linear takes float32 activations, not {x.dtype}")
        rows = x.reshape(-1, self.in_features)
        matmul = _compiled_per_token_int8_matmul() if self.fusion == INDUCTOR else per_token_int8_matmul
        output = matmul(rows, self.weight_t, self.weight_scale, self.bias)
        return output.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fusion={self.fusion}"


QUANTIZED_MODULE_TYPES = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit, quantized_dynamic.Linear, PerTokenInt8Linear)


def _check_int8_dynamic_fits(device: torch.device, compute_dtype: torch.dtype) -> None:
    if device.type != "cpu":
        raise ValueError(
            f"int8-dyn runs on torch's CPU int8 kernels (fbgemm's dynamic linear, or torch._int_mm with "
            f"its quantize and rescale passes compiled for the CPU); torch has no {device.type} kernel for "
            "fbgemm's dynamic int8 layers, and the int_mm path is built and measured for the CPU only. "
            "On a GPU use 'int8' (bitsandbytes LLM.int8) instead."
        )
    if compute_dtype != torch.float32:
        raise ValueError(
            f"int8-dyn layers take and return float32 activations; compute dtype {compute_dtype} "
            "cannot be combined with it (evaluate int8-dyn variants in float32)"
        )


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; known schemes: {SCHEMES}")


def conv1d_to_linear(conv: Conv1D) -> nn.Linear:
    """The nn.Linear computing the same function as GPT-2's Conv1D (x @ W + b, W stored [in, out])."""
    in_features, out_features = conv.weight.shape
    linear = nn.Linear(in_features, out_features, device="meta")
    linear.weight = nn.Parameter(conv.weight.detach().t().contiguous(), conv.weight.requires_grad)
    linear.bias = nn.Parameter(conv.bias.detach().clone(), conv.bias.requires_grad)
    return linear.train(conv.training)


def _quantized_linear(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scheme: str,
    compute_dtype: torch.dtype,
    int8_threshold: float,
    double_quant: bool,
    cpu_fused_4bit: bool,
    device: torch.device,
) -> nn.Module:
    out_features, in_features = weight.shape
    has_bias = bias is not None
    # Built on the meta device: the random init of a fresh layer would be thrown away anyway.
    if scheme == "int8":
        module = bnb.nn.Linear8bitLt(
            in_features, out_features, bias=has_bias,
            has_fp16_weights=False, threshold=int8_threshold, device="meta",
        )
        # Int8Params quantizes when moved off a CPU tensor (row-wise absmax, from fp16).
        module.weight = bnb.nn.Int8Params(
            weight.to("cpu"), requires_grad=False, has_fp16_weights=False
        ).to(device)
    else:
        linear_class = (
            bnb.nn.Linear4bit if in_features % BLOCKSIZE_4BIT == 0 else BlockStraddlingLinear4bit
        )
        module = linear_class(
            in_features, out_features, bias=has_bias, compute_dtype=compute_dtype,
            compress_statistics=double_quant, quant_type=scheme, device="meta",
        )
        # Params4bit quantizes on its first move to a device; it stores the state on the module.
        module.weight = bnb.nn.Params4bit(
            weight, requires_grad=False, blocksize=BLOCKSIZE_4BIT,
            compress_statistics=double_quant, quant_type=scheme, module=module,
        ).to(device)
        # bitsandbytes turns its fused CPU kernel on whenever the CPU has AVX512-BF16, and then
        # fails on the first forward for shapes the kernel cannot tile.
        fused_fits = in_features % BLOCKSIZE_4BIT == 0 and out_features % _CPU_FUSED_BLOCK_N == 0
        module.support_avx512bf16_for_cpu = bool(
            module.support_avx512bf16_for_cpu and cpu_fused_4bit and fused_fits
        )
    if has_bias:
        module.bias = nn.Parameter(bias.to(device), requires_grad=False)
    return module


class BlockStraddlingLinear4bit(bnb.nn.Linear4bit):
    """A Linear4bit whose rows straddle the 64-weight blocks (in_features % 64 != 0).

    quantize_4bit numbers the blocks over the flattened weight, but bitsandbytes 0.50.2's native
    CPU dequantize_4bit reads the absmax as if every row started a new block; for a 40 x 96 NF4
    weight that puts dequantized values off by up to 2.0. On CPU this layer dequantizes with the
    flat block layout instead, then multiplies in the compute dtype (what bitsandbytes' unfused
    path does). Real models (hidden sizes and head dims multiples of 64) do not need it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        compute_dtype = self.compute_dtype or x.dtype
        weight = dequantize_4bit_flat_blocks(self.weight.data, self.weight.quant_state)
        bias = None if self.bias is None else self.bias.to(compute_dtype)
        output = nn.functional.linear(x.to(compute_dtype), weight.to(compute_dtype), bias)
        return output.to(x.dtype)


def dequantize_4bit_flat_blocks(packed: torch.Tensor, state: bnb.functional.QuantState) -> torch.Tensor:
    """Weights from two 4-bit codes per byte (high nibble first) and one absmax per flat block."""
    packed = packed.reshape(-1).view(torch.uint8)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1).long()
    n = state.shape.numel()
    values = state.code.float()[codes[:n]]
    absmax = state.absmax.float()
    if state.nested:
        absmax = bnb.functional.dequantize_blockwise(state.absmax, state.state2).float() + state.offset
    block_of_value = torch.arange(n, device=values.device) // state.blocksize
    return (values * absmax[block_of_value]).reshape(state.shape)


class _DropFp16CastWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast from" not in record.getMessage()


def _silence_fp16_cast_warning() -> None:
    # LLM.int8 quantizes activations from fp16 by design; bitsandbytes logs this on every matmul.
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropFp16CastWarning) for f in logger.filters):
        logger.addFilter(_DropFp16CastWarning())
