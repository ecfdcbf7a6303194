"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning with OBS weight updates, block by block.

Each Linear/Conv1D inside a decoder block is pruned to minimise ||XWᵀ − XŴᵀ||² on calibration
activations X, using the Hessian H = 2XXᵀ of that layer-wise loss (paper §3). Blocks are
processed in order and each block's calibration outputs are recomputed with its pruned weights,
so the next block is fitted to the inputs it will really see. Magnitude pruning, the baseline,
removes the smallest |w| of the same layers with no update.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from llmopt_assets.models.architecture import decoder_layers

# Bump with any change to SparseGPT or magnitude pruning (sparsegpt*, magnitude* variants):
# Dagster then marks what it made stale.
CODE_VERSION = "1"

# The paper calibrates with 128 windows of 2048 tokens on a GPU. On a CPU the cost is two block
# forwards plus one XXᵀ per linear for every calibration token (~25 MFLOP/token per SmolLM2-135M
# block), so time grows with tokens. 32 x 512 = 16k tokens: SmolLM2-135M 2:4 took 722 CPU-seconds
# (~6 min on 2 idle cores) at 1.26 GB peak RSS, and 16k tokens is still >10x the widest layer
# input (1536), so every H is full rank before damping.
DEFAULT_CALIBRATION = dict(n_samples=32, seqlen=512)

LogFn = Callable[[str], None]


@dataclass(frozen=True)
class LayerSparsity:
    zeros: int
    total: int
    sparsity: float
    # mean ||(W − Ŵ)x||² / mean ||Wx||² over the calibration inputs x (None for magnitude pruning,
    # which sees no data).
    reconstruction_error: float | None = None


@dataclass
class SparsityReport:
    method: str  # "sparsegpt" or "magnitude"
    layers: dict[str, LayerSparsity]
    settings: dict[str, Any]
    seconds: float
    # n:m runs only: groups of m with fewer than n zeros (pattern broken), and groups with more
    # than n (harmless: weights that were already 0, or inputs that never fire).
    nm_violations: int | None = None
    nm_groups_with_extra_zeros: int | None = None

    @property
    def overall_sparsity(self) -> float:
        """Fraction of zeros over all pruned matrices together."""
        total = sum(layer.total for layer in self.layers.values())
        return sum(layer.zeros for layer in self.layers.values()) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "overall_sparsity": self.overall_sparsity,
            "layers": {name: asdict(layer) for name, layer in self.layers.items()},
            "settings": dict(self.settings),
            "seconds": self.seconds,
            "nm_violations": self.nm_violations,
            "nm_groups_with_extra_zeros": self.nm_groups_with_extra_zeros,
        }


def prunable_layers(model: PreTrainedModel) -> dict[str, nn.Module]:
    """Every Linear/Conv1D inside the decoder blocks, by qualified name (no embeddings, no lm_head)."""
    names = {id(module): name for name, module in model.named_modules()}
    return {
        names[id(module)]: module
        for block in decoder_layers(model)
        for module in block.modules()
        if isinstance(module, (nn.Linear, Conv1D))
    }


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as [out, in]: GPT-2's Conv1D stores it transposed ([in, out], y = xW + b)."""
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def _set_weight_out_in(module: nn.Module, weight: torch.Tensor) -> None:
    stored = weight.t() if isinstance(module, Conv1D) else weight
    module.weight.data.copy_(stored.to(module.weight.dtype))


def n_m_violations(
    weight: torch.Tensor, prune_n: int, prune_m: int, in_features_dim: int, *, exact: bool = False
) -> int:
    """Groups of prune_m consecutive input columns (per output row) breaking the n:m pattern.

    By default a group breaks it with fewer than prune_n zeros (more than m − n non-zeros: what
    2:4 sparse kernels refuse). exact=True also counts groups with more than prune_n zeros, which
    pruning cannot avoid where a group already held zeros (SmolLM2's de-quantized Q4_1 weights
    hold ~33k exact zeros, a few hundred groups of 4 with three of them).
    """
    columns = weight.movedim(in_features_dim, -1)
    if columns.shape[-1] % prune_m:
        raise ValueError(f"input dimension {columns.shape[-1]} is not a multiple of m={prune_m}")
    zeros_per_group = (columns == 0).reshape(*columns.shape[:-1], -1, prune_m).sum(-1)
    broken = zeros_per_group != prune_n if exact else zeros_per_group < prune_n
    return int(broken.sum())


def n_m_violations_by_layer(
    model: PreTrainedModel, prune_n: int, prune_m: int, *, exact: bool = False
) -> dict[str, int]:
    """n_m_violations of every prunable matrix of a model (the asset check's input)."""
    return {
        name: n_m_violations(weight_out_in(module), prune_n, prune_m, 1, exact=exact)
        for name, module in prunable_layers(model).items()
    }


def _check_settings(sparsity: float, prune_n: int, prune_m: int, blocksize: int) -> None:
    if prune_n or prune_m:
        if not 0 < prune_n < prune_m:
            raise ValueError(f"n:m pruning needs 0 < n < m, got {prune_n}:{prune_m}")
        if blocksize % prune_m:
            raise ValueError(f"blocksize {blocksize} must be a multiple of m={prune_m}")
    elif not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if blocksize < 1:
        raise ValueError(f"blocksize must be positive, got {blocksize}")


def _check_columns(name: str, columns: int, prune_m: int) -> None:
    if prune_m and columns % prune_m:
        raise ValueError(f"{name}: {columns} input features is not a multiple of m={prune_m}")


def _settings(sparsity: float, prune_n: int, prune_m: int) -> dict[str, Any]:
    pattern = f"{prune_n}:{prune_m}" if prune_n else "unstructured"
    target = prune_n / prune_m if prune_n else sparsity
    return {"pattern": pattern, "sparsity": target, "prune_n": prune_n, "prune_m": prune_m}


class HessianAccumulator:
    """Running H = 2/n Σ x xᵀ over the n input rows (tokens) a layer has seen, in fp32."""

    def __init__(self, columns: int, device: torch.device) -> None:
        self.xxt = torch.zeros(columns, columns, device=device, dtype=torch.float32)
        self.rows = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        x = inputs.reshape(-1, inputs.shape[-1]).float()
        self.xxt.addmm_(x.t(), x)
        self.rows += x.shape[0]

    def hessian(self) -> torch.Tensor:
        return self.xxt * (2.0 / self.rows)


def sparsegpt_prune_weight(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float = 0.5,
    prune_n: int = 0,
    prune_m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one weight [out, in] given its layer Hessian [in, in] (paper Algorithm 1).

    Returns the pruned weight (fp32) and, per row, the OBS estimate of the error it adds.
    `mask` (bool [out, in], True = prune) fixes the pruned set instead of selecting it.
    """
    _check_settings(sparsity, prune_n, prune_m, blocksize)
    W = weight.detach().float().clone()
    H = hessian.detach().double().clone()
    rows, columns = W.shape
    _check_columns("weight", columns, prune_m)
    # An input that is always 0 carries no information: its weights are free, so zero them.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    # Row i of the upper Cholesky factor U of H⁻¹ is row i of (H[i:, i:])⁻¹ divided by
    # sqrt of its diagonal (§3.3): all the sequential OBS inverses at once.
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    U = U.to(W.dtype)
    losses = torch.zeros(rows, device=W.device, dtype=W.dtype)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        if mask is not None:
            mask1 = mask[:, i1:i2].clone()
        elif prune_n:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            # Adaptive mask selection (§3.2): the lowest OBS saliency w²/[H⁻¹]_jj in this block.
            saliency = (W1 / d) ** 2
            n_pruned = int(saliency.numel() * sparsity)
            mask1 = torch.zeros(W1.numel(), device=W.device, dtype=torch.bool)
            mask1[saliency.flatten().topk(n_pruned, largest=False).indices] = True
            mask1 = mask1.view_as(W1)
        for i in range(i2 - i1):
            if prune_n and mask is None and i % prune_m == 0:
                # n:m (§3.4): the n lowest saliencies of these m input columns, from the weights
                # as updated so far.
                saliency = (W1[:, i : i + prune_m] / d[i : i + prune_m]) ** 2
                lowest = saliency.topk(prune_n, dim=1, largest=False).indices
                mask1.scatter_(1, i + lowest, True)
            w = W1[:, i]
            q = torch.where(mask1[:, i], torch.zeros_like(w), w)
            Q1[:, i] = q
            err = (w - q) / d[i]
            losses += err**2 / 2
            # OBS update δ = −(w_i − q_i) / [H_F⁻¹]_ii · [H_F⁻¹]_{i,:} on the columns not yet fixed.
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        # Lazy batch update (§3.3): the block's errors reach the later columns in one matmul.
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return W, losses


def reconstruction_error(
    weight: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor
) -> float:
    """mean ||(W − Ŵ)x||² / mean ||Wx||² on the inputs H was built from (tr ΔW H ΔWᵀ / tr W H Wᵀ)."""
    W = weight.float()
    delta = W - pruned.float()
    signal = float(((W @ hessian) * W).sum())
    return float(((delta @ hessian) * delta).sum()) / signal if signal > 0 else 0.0


class _StopForward(Exception):
    """Raised by the capture hook once the first block's inputs are recorded."""


def _hidden_states(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _first_block_inputs(
    model: PreTrainedModel, calibration_ids: torch.Tensor
) -> tuple[list[torch.Tensor], tuple, dict[str, Any]]:
    """Hidden states entering block 0 for each sample, plus the block's other arguments.

    The other arguments (causal mask, rotary position embeddings, position ids...) depend only on
    the sequence length, and all calibration windows have the same one, so one copy serves all.
    """
    inputs: list[torch.Tensor] = []
    captured: dict[str, Any] = {}

    def capture(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if not args:
            raise ValueError("decoder block called without positional hidden states")
        inputs.append(args[0])
        captured["args"], captured["kwargs"] = args[1:], kwargs
        raise _StopForward

    handle = decoder_layers(model)[0].register_forward_pre_hook(capture, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for sample in calibration_ids:
            try:
                model(input_ids=sample.unsqueeze(0).to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return inputs, captured["args"], captured["kwargs"]


def sparsegpt_prune(
    model: PreTrainedModel,
    calibration_ids: torch.Tensor,
    *,
    sparsity: float = 0.5,
    prune_n: int = 0,
    prune_m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    log: LogFn | None = None,
) -> SparsityReport:
    """Prune every Linear/Conv1D of the decoder blocks in place with SparseGPT.

    calibration_ids: [n_samples, seqlen] token ids. prune_n:prune_m > 0 selects n:m sparsity
    (n zeros in every m consecutive input columns); otherwise `sparsity` is unstructured.
    """
    _check_settings(sparsity, prune_n, prune_m, blocksize)
    if calibration_ids.ndim != 2 or calibration_ids.shape[0] == 0:
        shape = tuple(calibration_ids.shape)
        raise ValueError(f"calibration_ids must be [n_samples, seqlen], got {shape}")
    started = time.perf_counter()
    names = {id(module): name for name, module in model.named_modules()}
    layers: dict[str, LayerSparsity] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs, args, kwargs = _first_block_inputs(model, calibration_ids)
            for index, block in enumerate(decoder_layers(model)):
                block_started = time.perf_counter()
                linears = [m for m in block.modules() if isinstance(m, (nn.Linear, Conv1D))]
                accumulators = {}
                for module in linears:
                    columns = weight_out_in(module).shape[1]
                    _check_columns(names[id(module)], columns, prune_m)
                    accumulators[module] = HessianAccumulator(columns, module.weight.device)
                handles = [
                    module.register_forward_hook(
                        lambda mod, inp, _out: accumulators[mod].add_batch(inp[0])
                    )
                    for module in linears
                ]
                try:
                    for x in inputs:
                        block(x, *args, **kwargs)
                finally:
                    for handle in handles:
                        handle.remove()
                for module in linears:
                    hessian = accumulators.pop(module).hessian()
                    dense = weight_out_in(module).float()
                    pruned, _ = sparsegpt_prune_weight(
                        dense, hessian, sparsity=sparsity, prune_n=prune_n, prune_m=prune_m,
                        blocksize=blocksize, percdamp=percdamp,
                    )
                    error = reconstruction_error(dense, pruned, hessian)
                    _set_weight_out_in(module, pruned)
                    layers[names[id(module)]] = _layer_sparsity(module, error)
                # The next block is calibrated on what this pruned block really outputs.
                inputs = [_hidden_states(block(x, *args, **kwargs)) for x in inputs]
                if log is not None:
                    block_errors = [
                        layers[names[id(m)]].reconstruction_error or 0.0 for m in linears
                    ]
                    log(
                        f"sparsegpt block {index}: {len(linears)} layers pruned, mean relative "
                        f"reconstruction error {sum(block_errors) / len(block_errors):.4f}, "
                        f"{time.perf_counter() - block_started:.1f}s"
                    )
    finally:
        model.train(was_training)
    settings = _settings(sparsity, prune_n, prune_m) | {
        "blocksize": blocksize,
        "percdamp": percdamp,
        "n_samples": int(calibration_ids.shape[0]),
        "seqlen": int(calibration_ids.shape[1]),
    }
    return SparsityReport(
        method="sparsegpt",
        layers=layers,
        settings=settings,
        seconds=time.perf_counter() - started,
        **_violation_counts(model, prune_n, prune_m),
    )


def magnitude_prune_weight(
    weight: torch.Tensor, *, sparsity: float = 0.5, prune_n: int = 0, prune_m: int = 0
) -> torch.Tensor:
    """Zero the smallest |w| of a weight [out, in]: per n:m group of input columns, or overall."""
    W = weight.detach().clone()
    rows, columns = W.shape
    magnitude = W.abs().float()
    if prune_n:
        _check_columns("weight", columns, prune_m)
        groups = magnitude.reshape(rows, columns // prune_m, prune_m)
        lowest = groups.topk(prune_n, dim=-1, largest=False).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True)
    else:
        mask = torch.zeros(W.numel(), device=W.device, dtype=torch.bool)
        mask[magnitude.flatten().topk(int(W.numel() * sparsity), largest=False).indices] = True
    W[mask.view_as(W)] = 0
    return W


def magnitude_prune(
    model: PreTrainedModel, *, sparsity: float = 0.5, prune_n: int = 0, prune_m: int = 0
) -> SparsityReport:
    """The baseline: each prunable matrix keeps its largest |w| (per n:m group, or per layer)."""
    _check_settings(sparsity, prune_n, prune_m, prune_m or 1)
    started = time.perf_counter()
    layers: dict[str, LayerSparsity] = {}
    with torch.no_grad():
        for name, module in prunable_layers(model).items():
            weight = weight_out_in(module)
            _check_columns(name, weight.shape[1], prune_m)
            pruned = magnitude_prune_weight(
                weight, sparsity=sparsity, prune_n=prune_n, prune_m=prune_m
            )
            _set_weight_out_in(module, pruned)
            layers[name] = _layer_sparsity(module, None)
    return SparsityReport(
        method="magnitude",
        layers=layers,
        settings=_settings(sparsity, prune_n, prune_m),
        seconds=time.perf_counter() - started,
        **_violation_counts(model, prune_n, prune_m),
    )


def _layer_sparsity(module: nn.Module, error: float | None) -> LayerSparsity:
    zeros = int((module.weight == 0).sum())
    total = module.weight.numel()
    return LayerSparsity(zeros, total, zeros / total, reconstruction_error=error)


def _violation_counts(model: PreTrainedModel, prune_n: int, prune_m: int) -> dict[str, int | None]:
    if not prune_n:
        return {"nm_violations": None, "nm_groups_with_extra_zeros": None}
    broken = sum(n_m_violations_by_layer(model, prune_n, prune_m).values())
    not_exact = sum(n_m_violations_by_layer(model, prune_n, prune_m, exact=True).values())
    return {"nm_violations": broken, "nm_groups_with_extra_zeros": not_exact - broken}
