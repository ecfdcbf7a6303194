"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights before int8.

A linear layer computes y = x W^T. For any positive per-input-channel vector s,
y = (x / s)(W diag(s))^T exactly; when x / s is made by the module that produces x, nothing is
added at run time. SmoothQuant chooses s_j = max|X_j|^α / max|W_j|^(1−α) from calibration data
(§4, α = 0.5 by default), so one activation scale per tensor no longer has to cover channels 100×
larger than the rest (SmolLM2-135M: max/RMS up to ~830 at the down_proj inputs).

Where the 1/s goes (each fold is exact in real arithmetic):
- into the norm before the layers that read it: q/k/v after the attention norm, gate/up (Llama),
  fc1 (OPT), c_fc (GPT-2) after the MLP norm: norm weight (and LayerNorm bias) / s;
- into the value projection's output rows, for the attention output projection: attention is a
  convex combination of value rows, so scaling a value channel scales the same channel of every
  head's output. With grouped-query attention (SmolLM2: 9 query heads, 3 KV heads) one value
  channel feeds one channel of every query head of its group, so s is chosen per KV channel from
  the statistics of all the o_proj input channels it feeds;
- into up_proj's output rows for down_proj (Llama: silu(gate) · up is linear in up), and fc1's
  output rows for fc2 (OPT: ReLU(x / s) = ReLU(x) / s for s > 0).
GPT-2's MLP output (after GELU, not homogeneous) and OPT's post-norm variant (350m) are left
unsmoothed and listed in the report.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from llmopt_assets.models.architecture import decoder_layers, model_family
from llmopt_assets.models.store import CorruptArtifactError

DEFAULT_ALPHA = 0.5  # the paper's migration strength for most models (§4, Fig. 10)
# Smoothing factors outside this range are clamped: a dead channel (max |x| = 0) or a zero weight
# column would otherwise give s = 0 or inf.
MIN_SCALE, MAX_SCALE = 1e-5, 1e5


@dataclass(frozen=True)
class SmoothingGroup:
    """Linear layers reading one activation, and the module whose output it is (s folds into it).

    ``producer_kind``: "norm" (RMSNorm / LayerNorm weight and bias), "linear" (an nn.Linear's
    output rows) or "conv1d-columns" (GPT-2's Conv1D c_attn, value columns from
    ``producer_offset``). ``channel_to_row[c]`` is the producer row feeding consumer input
    channel c (identity unless grouped-query attention shares one value row among query heads).
    """

    producer: str
    producer_kind: str
    consumers: tuple[str, ...]
    channel_to_row: tuple[int, ...]
    producer_offset: int = 0


def _linear_weight(module: nn.Module) -> torch.Tensor:
    """The [out, in] weight of an nn.Linear or a GPT-2 Conv1D (stored [in, out])."""
    if isinstance(module, Conv1D):
        return module.weight.t()
    if isinstance(module, nn.Linear):
        return module.weight
    raise TypeError(f"smoothing needs nn.Linear or Conv1D consumers, got {type(module).__name__}")


def _value_projection(module: nn.Module) -> tuple[nn.Linear, list[int] | None]:
    """The value nn.Linear, and the KV head of each query head when head pruning wrapped it."""
    projection = getattr(module, "projection", None)
    if projection is not None:
        return projection, module.kv_head_of_query_head.tolist()
    return module, None


def _identity(n: int) -> tuple[int, ...]:
    return tuple(range(n))


def smoothing_groups(model: PreTrainedModel) -> tuple[list[SmoothingGroup], list[str]]:
    """The groups of every decoder layer, and the quantizable linear layers left unsmoothed."""
    family = model_family(model)
    if model.config.model_type == "gemma":
        raise ValueError("Gemma's RMSNorm multiplies by (1 + weight): folding is not implemented for it")
    groups: list[SmoothingGroup] = []
    unsmoothed: list[str] = []
    prefix = {"gpt2": "transformer.h", "opt": "model.decoder.layers", "llama": "model.layers"}[family]
    for index, layer in enumerate(decoder_layers(model)):
        p = f"{prefix}.{index}"
        if family == "llama":
            attention, mlp = layer.self_attn, layer.mlp
            if not all(hasattr(attention, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) or not all(
                hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")
            ):
                raise ValueError(f"{model.config.model_type}: fused projections are not supported by smoothing")
            _, kv_of_query = _value_projection(attention.v_proj)
            head_dim = attention.head_dim
            n_inputs = attention.o_proj.in_features
            if kv_of_query is None:
                groups_per_kv = attention.num_key_value_groups
                kv_of_query = [q // groups_per_kv for q in range(n_inputs // head_dim)]
            # Head pruning may wrap k_proj / v_proj (KeyValueHeadExpansion): the linear is inside.
            qkv = tuple(
                f"{p}.self_attn.{n}" + (".projection" if hasattr(getattr(attention, n), "projection") else "")
                for n in ("q_proj", "k_proj", "v_proj")
            )
            value_name = qkv[2]
            rows = tuple(kv_of_query[c // head_dim] * head_dim + c % head_dim for c in range(n_inputs))
            groups += [
                SmoothingGroup(f"{p}.input_layernorm", "norm", qkv, _identity(attention.q_proj.in_features)),
                SmoothingGroup(value_name, "linear", (f"{p}.self_attn.o_proj",), rows),
                SmoothingGroup(f"{p}.post_attention_layernorm", "norm",
                               (f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"), _identity(mlp.up_proj.in_features)),
                SmoothingGroup(f"{p}.mlp.up_proj", "linear", (f"{p}.mlp.down_proj",),
                               _identity(mlp.down_proj.in_features)),
            ]
        elif family == "opt":
            attention = layer.self_attn
            if not layer.do_layer_norm_before:
                unsmoothed += [f"{p}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj")] + [f"{p}.fc1"]
            else:
                groups += [
                    SmoothingGroup(f"{p}.self_attn_layer_norm", "norm",
                                   tuple(f"{p}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj")),
                                   _identity(attention.q_proj.in_features)),
                    SmoothingGroup(f"{p}.final_layer_norm", "norm", (f"{p}.fc1",), _identity(layer.fc1.in_features)),
                ]
            groups.append(SmoothingGroup(f"{p}.self_attn.v_proj", "linear", (f"{p}.self_attn.out_proj",),
                                         _identity(attention.out_proj.in_features)))
            if model.config.activation_function == "relu":
                groups.append(SmoothingGroup(f"{p}.fc1", "linear", (f"{p}.fc2",), _identity(layer.fc2.in_features)))
            else:
                unsmoothed.append(f"{p}.fc2")
        else:
            attention = layer.attn
            width = attention.split_size  # the value block of c_attn's output columns
            groups += [
                SmoothingGroup(f"{p}.ln_1", "norm", (f"{p}.attn.c_attn",), _identity(attention.c_attn.weight.shape[0])),
                SmoothingGroup(f"{p}.attn.c_attn", "conv1d-columns", (f"{p}.attn.c_proj",), _identity(width),
                               producer_offset=2 * width),
                SmoothingGroup(f"{p}.ln_2", "norm", (f"{p}.mlp.c_fc",), _identity(layer.mlp.c_fc.weight.shape[0])),
            ]
            unsmoothed.append(f"{p}.mlp.c_proj")  # reads GELU(c_fc(x)): no exact fold
    return groups, unsmoothed


@torch.inference_mode()
def input_channel_absmax(
    model: PreTrainedModel, calibration: torch.Tensor, names: list[str]
) -> dict[str, torch.Tensor]:
    """max |x_j| over every calibration token of each named layer's input channels j.

    ``calibration``: [n_samples, length] token windows, run one window at a time.
    """
    modules = dict(model.named_modules())
    absmax: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach()
            current = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float().cpu()
            absmax[name] = current if name not in absmax else torch.maximum(absmax[name], current)
        return record

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in names]
    device = next(model.parameters()).device
    try:
        for window in calibration:
            model(input_ids=window[None].to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return absmax


def _rows_of_channels(values: torch.Tensor, channel_to_row: tuple[int, ...], n_rows: int) -> torch.Tensor:
    """Per producer row, the max of ``values`` over the consumer channels it feeds."""
    index = torch.tensor(channel_to_row, dtype=torch.long)
    return torch.zeros(n_rows, dtype=values.dtype).scatter_reduce(0, index, values, "amax", include_self=False)


def smoothing_factors(
    model: PreTrainedModel,
    groups: list[SmoothingGroup],
    absmax: dict[str, torch.Tensor],
    alpha: float = DEFAULT_ALPHA,
) -> dict[str, torch.Tensor]:
    """s per producer row of each group: max|X_j|^α / max|W_j|^(1−α) (SmoothQuant eq. 4)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant's migration strength alpha must be in [0, 1], got {alpha}")
    modules = dict(model.named_modules())
    factors: dict[str, torch.Tensor] = {}
    for group in groups:
        n_rows = max(group.channel_to_row) + 1
        x_max = torch.stack([absmax[name] for name in group.consumers]).amax(dim=0)
        w_max = torch.stack([
            _linear_weight(modules[name]).detach().abs().amax(dim=0).float().cpu() for name in group.consumers
        ]).amax(dim=0)
        x_rows = _rows_of_channels(x_max, group.channel_to_row, n_rows)
        w_rows = _rows_of_channels(w_max, group.channel_to_row, n_rows)
        s = x_rows.pow(alpha) / w_rows.pow(1.0 - alpha)
        s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
        factors[group.producer] = s.clamp(MIN_SCALE, MAX_SCALE)
    return factors


@torch.no_grad()
def fold_smoothing(model: PreTrainedModel, groups: list[SmoothingGroup], factors: dict[str, torch.Tensor]) -> None:
    """Divide each producer's output rows by s and multiply the consumers' input columns by s,
    in place: the model computes the same function (to rounding) with smoothed activations."""
    modules = dict(model.named_modules())
    for group in groups:
        s = factors.get(group.producer)
        if s is None:
            raise KeyError(f"no smoothing factors for {group.producer}")
        producer = modules[group.producer]
        s = s.to(device=_linear_weight(modules[group.consumers[0]]).device)
        if group.producer_kind == "norm":
            if producer.weight.shape[0] != len(s):
                raise ValueError(f"{group.producer}: {producer.weight.shape[0]} channels, {len(s)} factors")
            producer.weight.div_(s.to(producer.weight.dtype))
            if getattr(producer, "bias", None) is not None:
                producer.bias.div_(s.to(producer.bias.dtype))
        elif group.producer_kind == "linear":
            producer.weight.div_(s[:, None].to(producer.weight.dtype))
            if producer.bias is not None:
                producer.bias.div_(s.to(producer.bias.dtype))
        elif group.producer_kind == "conv1d-columns":
            columns = slice(group.producer_offset, group.producer_offset + len(s))
            producer.weight[:, columns] /= s[None, :].to(producer.weight.dtype)
            producer.bias[columns] /= s.to(producer.bias.dtype)
        else:
            raise ValueError(f"unknown producer kind {group.producer_kind!r}")
        per_channel = s[torch.tensor(group.channel_to_row, dtype=torch.long, device=s.device)]
        for name in group.consumers:
            consumer = modules[name]
            if isinstance(consumer, Conv1D):
                consumer.weight.mul_(per_channel[:, None].to(consumer.weight.dtype))
            else:
                consumer.weight.mul_(per_channel[None, :].to(consumer.weight.dtype))


def consumers(groups: list[SmoothingGroup]) -> Iterator[str]:
    for group in groups:
        yield from group.consumers


@dataclass(frozen=True)
class SmoothingReport:
    alpha: float
    groups: int
    smoothed_layers: int
    unsmoothed_layers: list[str]
    calibration_windows: int
    calibration_length: int
    max_activation_ratio_before: float  # the largest max|x| / median-channel max|x| over consumers
    max_activation_ratio_after: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def smooth(
    model: PreTrainedModel, calibration: torch.Tensor, alpha: float = DEFAULT_ALPHA
) -> tuple[dict[str, torch.Tensor], SmoothingReport]:
    """Calibrate, choose and fold SmoothQuant factors into ``model`` in place; the factors (to
    apply again to a fresh copy of the same weights with ``fold_smoothing``) and a report."""
    if calibration.ndim != 2 or calibration.shape[0] < 1:
        raise ValueError(f"calibration must be [n_windows, length] token ids, got {tuple(calibration.shape)}")
    groups, unsmoothed = smoothing_groups(model)
    names = list(dict.fromkeys(consumers(groups)))
    absmax = input_channel_absmax(model, calibration, names)
    factors = smoothing_factors(model, groups, absmax, alpha)
    fold_smoothing(model, groups, factors)
    after = smoothed_absmax(groups, absmax, factors)
    return factors, SmoothingReport(
        alpha=alpha,
        groups=len(groups),
        smoothed_layers=len(names),
        unsmoothed_layers=unsmoothed,
        calibration_windows=int(calibration.shape[0]),
        calibration_length=int(calibration.shape[1]),
        max_activation_ratio_before=max(_spread(v) for v in absmax.values()),
        max_activation_ratio_after=max(_spread(v) for v in after.values()),
    )


def smoothed_absmax(
    groups: list[SmoothingGroup], absmax: dict[str, torch.Tensor], factors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """What max |x_j| becomes once the activations are divided by s."""
    after = {}
    for group in groups:
        per_channel = factors[group.producer][torch.tensor(group.channel_to_row, dtype=torch.long)]
        for name in group.consumers:
            after[name] = absmax[name] / per_channel
    return after


def _spread(channel_max: torch.Tensor) -> float:
    median = float(channel_max.median())
    return float(channel_max.max()) / median if median > 0 else float("inf")


FACTORS_FILE = "smoothing-factors.safetensors"


def factors_bytes(factors: dict[str, torch.Tensor]) -> bytes:
    """The factors (producer name -> s) as a safetensors file's bytes."""
    from safetensors.torch import save

    return save({name: s.contiguous().float() for name, s in factors.items()})


def load_factors(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The factors written by ``save_factors``; refused when they are not the recorded ones."""
    from safetensors.torch import load_file

    if sha256 is not None and hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise CorruptArtifactError(f"smoothing factors {path} do not match their recorded sha256: rematerialize the variant")
    return load_file(str(path))
