import json
import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from llmopt_assets.models.architecture import decoder_layers
from llmopt_assets.techniques.sparsegpt import (
    magnitude_prune,
    magnitude_prune_weight,
    n_m_violations,
    sparsegpt_prune,
    sparsegpt_prune_weight,
)
from llmopt_assets_tests.tiny_models import random_token_ids, tiny_model


def correlated_inputs(n_rows: int, columns: int, seed: int) -> torch.Tensor:
    """Inputs driven by a few shared factors, like real activations (so OBS updates matter)."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(6, columns, generator=torch.Generator().manual_seed(1234))
    factors = torch.randn(n_rows, 6, generator=generator)
    return factors @ mixing + 0.1 * torch.randn(n_rows, columns, generator=generator)


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    return 2 * x.double().t() @ x.double() / x.shape[0]


def damped(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    return hessian + percdamp * torch.diag(hessian).mean() * torch.eye(hessian.shape[0], dtype=hessian.dtype)


def sequential_obs_reference(
    weight: torch.Tensor, hessian: torch.Tensor, *, sparsity: float, prune_n: int, prune_m: int,
    mask_block: int, percdamp: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT written plainly: one column at a time, explicit inverses of H restricted to the
    columns not yet fixed (F = {i, i+1, ...}), the OBS update for zeroing w_i in every row,
    w[F] -= w_i / [H_F⁻¹]_ii · [H_F⁻¹]_{i,:}. No Cholesky, no lazy batching."""
    W = weight.double().clone()
    H = damped(hessian.double(), percdamp)
    rows, columns = W.shape
    mask = torch.zeros(rows, columns, dtype=torch.bool)

    def inverse_diagonal(j: int) -> float:
        return float(torch.linalg.inv(H[j:, j:])[0, 0])

    for i in range(columns):
        if prune_n and i % prune_m == 0:
            group = list(range(i, i + prune_m))
            saliency = W[:, group] ** 2 / torch.tensor([inverse_diagonal(j) for j in group])
            for r in range(rows):
                for k in sorted(range(prune_m), key=lambda k: float(saliency[r, k]))[:prune_n]:
                    mask[r, i + k] = True
        if not prune_n and i % mask_block == 0:
            block = list(range(i, min(i + mask_block, columns)))
            saliency = W[:, block] ** 2 / torch.tensor([inverse_diagonal(j) for j in block])
            order = sorted(range(saliency.numel()), key=lambda f: float(saliency.flatten()[f]))
            for f in order[: int(saliency.numel() * sparsity)]:
                mask[f // len(block), block[0] + f % len(block)] = True
        inverse = torch.linalg.inv(H[i:, i:])
        for r in range(rows):
            if mask[r, i]:
                W[r, i:] -= W[r, i] / inverse[0, 0] * inverse[0, :]
    W[mask] = 0.0
    return W, mask


@pytest.mark.parametrize(
    ("sparsity", "prune_n", "prune_m", "blocksize"),
    [(0.5, 2, 4, 32), (0.5, 2, 4, 8), (0.5, 0, 0, 32), (0.5, 0, 0, 8), (0.75, 0, 0, 16), (0.0, 1, 4, 4)],
)
def test_one_layer_matches_plain_sequential_obs(
    sparsity: float, prune_n: int, prune_m: int, blocksize: int
) -> None:
    x = correlated_inputs(256, 32, seed=0)
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    hessian = hessian_of(x)
    pruned, _ = sparsegpt_prune_weight(
        weight, hessian.float(), sparsity=sparsity, prune_n=prune_n, prune_m=prune_m,
        blocksize=blocksize, percdamp=0.01,
    )
    expected, expected_mask = sequential_obs_reference(
        weight, hessian, sparsity=sparsity, prune_n=prune_n, prune_m=prune_m,
        mask_block=blocksize, percdamp=0.01,
    )
    assert torch.equal(pruned == 0, expected_mask)
    torch.testing.assert_close(pruned.double(), expected, rtol=1e-3, atol=1e-3 * float(weight.abs().max()))


def test_pruned_prefix_has_the_closed_form_optimum() -> None:
    # When a row's pruned weights all come before its kept ones, the sequential OBS steps never
    # freeze a kept weight early, so the result is the constrained least-squares optimum:
    # minimise (ŵ − w)ᵀH(ŵ − w) s.t. ŵ_S = 0  =>  ŵ_U = w_U + H_UU⁻¹ H_US w_S.
    x = correlated_inputs(200, 16, seed=2)
    weight = torch.randn(5, 16, generator=torch.Generator().manual_seed(3))
    hessian = hessian_of(x)
    prefix_lengths = [1, 4, 7, 8, 12]
    mask = torch.zeros(5, 16, dtype=torch.bool)
    for row, length in enumerate(prefix_lengths):
        mask[row, :length] = True
    pruned, _ = sparsegpt_prune_weight(weight, hessian.float(), mask=mask, blocksize=4, percdamp=0.01)
    H = damped(hessian, 0.01)
    for row, length in enumerate(prefix_lengths):
        S, U = slice(0, length), slice(length, 16)
        w = weight[row].double()
        optimum = w[U] + torch.linalg.solve(H[U, U], H[U, S] @ w[S])
        assert torch.all(pruned[row, S] == 0)
        torch.testing.assert_close(pruned[row, U].double(), optimum, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(("prune_n", "prune_m", "sparsity"), [(2, 4, 0.5), (0, 0, 0.5)])
def test_sparsegpt_beats_magnitude_on_held_out_activations(
    prune_n: int, prune_m: int, sparsity: float
) -> None:
    calibration, held_out = correlated_inputs(512, 64, seed=4), correlated_inputs(512, 64, seed=5)
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(6))
    obs, _ = sparsegpt_prune_weight(
        weight, hessian_of(calibration).float(), sparsity=sparsity, prune_n=prune_n, prune_m=prune_m
    )
    magnitude = magnitude_prune_weight(weight, sparsity=sparsity, prune_n=prune_n, prune_m=prune_m)
    for pruned in (obs, magnitude):
        assert int((pruned == 0).sum()) == weight.numel() // 2

    def output_error(pruned: torch.Tensor) -> float:
        return float(torch.linalg.norm(held_out @ weight.t() - held_out @ pruned.t()))

    assert output_error(obs) < 0.5 * output_error(magnitude)


def test_dead_inputs_are_zeroed_without_nan() -> None:
    x = correlated_inputs(128, 16, seed=7)
    x[:, [2, 9]] = 0.0  # inputs that never fire
    weight = torch.randn(6, 16, generator=torch.Generator().manual_seed(8))
    pruned, losses = sparsegpt_prune_weight(weight, hessian_of(x).float(), prune_n=2, prune_m=4)
    assert torch.isfinite(pruned).all() and torch.isfinite(losses).all()
    assert torch.all(pruned[:, [2, 9]] == 0)
    zeros_per_group = (pruned == 0).reshape(6, 4, 4).sum(-1)
    assert torch.all(zeros_per_group == 2)  # the dead column is one of the two pruned


def test_n_m_violations_counts_groups_by_hand() -> None:
    weight = torch.tensor(
        [
            [0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 0.0, 4.0],  # 2 zeros, 2 zeros
            [0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 0.0, 3.0],  # 3 zeros (too many), 1 zero (too few)
        ]
    )
    assert n_m_violations(weight, 2, 4, in_features_dim=1) == 1
    assert n_m_violations(weight, 2, 4, in_features_dim=1, exact=True) == 2
    # Conv1D layout ([in, out]): the same matrix transposed, input along dim 0.
    assert n_m_violations(weight.t(), 2, 4, in_features_dim=0, exact=True) == 2
    with pytest.raises(ValueError, match="multiple of m"):
        n_m_violations(weight[:, :6], 2, 4, in_features_dim=1)


def weight_out_in_by_hand(module: nn.Module) -> torch.Tensor:
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def decoder_linears(model: nn.Module) -> list[nn.Module]:
    return [m for block in decoder_layers(model) for m in block.modules() if isinstance(m, (nn.Linear, Conv1D))]


def untouched_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    pruned_weights = {id(m.weight) for m in decoder_linears(model)}
    return {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in pruned_weights}


@pytest.mark.parametrize("method", ["sparsegpt", "magnitude"])
def test_2_4_pattern_exact_and_model_still_runs(model: nn.Module, method: str) -> None:
    ids = random_token_ids(4, 24)
    dense = {id(m): weight_out_in_by_hand(m).detach().clone() for m in decoder_linears(model)}
    others = untouched_parameters(model)
    if method == "sparsegpt":
        report = sparsegpt_prune(model, ids, prune_n=2, prune_m=4, blocksize=16)
    else:
        report = magnitude_prune(model, prune_n=2, prune_m=4)
    for module in decoder_linears(model):
        weight = weight_out_in_by_hand(module)
        zeros_per_group = (weight == 0).reshape(weight.shape[0], -1, 4).sum(-1)
        assert torch.all(zeros_per_group == 2)
        if method == "magnitude":
            # Kept: the two largest |w| of each group, unchanged.
            groups = dense[id(module)].reshape(weight.shape[0], -1, 4)
            kept = torch.zeros_like(groups, dtype=torch.bool)
            for index in torch.cartesian_prod(torch.arange(groups.shape[0]), torch.arange(groups.shape[1])):
                r, g = index.tolist()
                for k in sorted(range(4), key=lambda k: -abs(float(groups[r, g, k])))[:2]:
                    kept[r, g, k] = True
            torch.testing.assert_close(weight.reshape(groups.shape), torch.where(kept, groups, 0.0))
    for name, parameter in model.named_parameters():
        if name in others:
            assert torch.equal(parameter, others[name]), f"{name} must not be pruned"
    assert report.nm_violations == 0 and report.nm_groups_with_extra_zeros == 0
    assert report.overall_sparsity == 0.5
    assert len(report.layers) == len(decoder_linears(model))
    json.dumps(report.to_dict())
    loss = model(random_token_ids(2, 24, seed=1), labels=random_token_ids(2, 24, seed=1)).loss
    assert math.isfinite(float(loss.detach()))


def test_unstructured_sparsity_per_layer(model: nn.Module) -> None:
    report = sparsegpt_prune(model, random_token_ids(4, 24), sparsity=0.5)
    for name, module in zip(report.layers, decoder_linears(model), strict=True):
        zeros = int((module.weight == 0).sum())
        assert zeros == module.weight.numel() // 2
        assert report.layers[name].zeros == zeros
        assert 0 < report.layers[name].reconstruction_error < 1
    assert report.nm_violations is None
    assert report.settings["n_samples"] == 4 and report.settings["seqlen"] == 24


def test_blocks_are_calibrated_on_pruned_inputs(arch: str) -> None:
    # Reference pipeline: no cached block inputs or replayed kwargs; for each block, run the
    # WHOLE model (earlier blocks already pruned) with hooks on that block's layers, build H from
    # the hooked inputs, prune them all.
    ids = random_token_ids(4, 16, seed=2)
    pruned_model = tiny_model(arch)
    sparsegpt_prune(pruned_model, ids, prune_n=2, prune_m=4, blocksize=8)
    reference = tiny_model(arch)
    for block in decoder_layers(reference):
        linears = [m for m in block.modules() if isinstance(m, (nn.Linear, Conv1D))]
        inputs: dict[nn.Module, torch.Tensor] = {}
        handles = [
            m.register_forward_hook(lambda mod, inp, _out: inputs.__setitem__(mod, inp[0])) for m in linears
        ]
        with torch.no_grad():
            reference(ids, use_cache=False)
        for handle in handles:
            handle.remove()
        for module in linears:
            x = inputs[module].reshape(-1, inputs[module].shape[-1])
            pruned, _ = sparsegpt_prune_weight(
                weight_out_in_by_hand(module), hessian_of(x).float(), prune_n=2, prune_m=4, blocksize=8
            )
            with torch.no_grad():
                module.weight.copy_(pruned.t() if isinstance(module, Conv1D) else pruned)
    for expected, actual in zip(decoder_linears(reference), decoder_linears(pruned_model), strict=True):
        torch.testing.assert_close(actual.weight, expected.weight, rtol=1e-3, atol=1e-4)


def test_bad_settings_are_refused() -> None:
    model = tiny_model("llama")
    ids = random_token_ids(2, 8)
    with pytest.raises(ValueError, match="multiple of m"):
        sparsegpt_prune(model, ids, prune_n=2, prune_m=4, blocksize=6)
    with pytest.raises(ValueError, match="0 < n < m"):
        magnitude_prune(model, prune_n=4, prune_m=4)
    with pytest.raises(ValueError, match="sparsity"):
        sparsegpt_prune(model, ids, sparsity=1.0)
    with pytest.raises(ValueError, match="input features"):
        magnitude_prune(model, prune_n=2, prune_m=3)
