"""What must hold of a built variant, as plain results the Dagster layer wraps in asset checks:
heads really removed, the exact n:m pattern in the stored weights, modules really quantized.

Each check reads the technique's own report (head pruning's parameter counts, the quantization
report) or, for n:m sparsity, the weights as stored, re-read from disk: a check of what the
pipeline wrote, not of what it meant to write."""

from dataclasses import dataclass, field

from llmopt_assets.models.store import Manifest, ModelStore
from llmopt_assets.techniques import sparsegpt
from llmopt_assets.techniques.loading import load_variant
from llmopt_assets.techniques.recipe import Recipe


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    applies: bool  # False: the recipe has no such step, nothing to check (passes)
    metadata: dict = field(default_factory=dict)  # plain numbers, strings, lists


def not_applicable(name: str) -> CheckOutcome:
    return CheckOutcome(name, passed=True, applies=False)


def heads_really_removed(details: dict) -> CheckOutcome:
    """Heads were removed, and the parameter count fell by exactly what their projections held."""
    heads = details.get("prune-heads")
    if heads is None:
        return not_applicable("heads_really_removed")
    drop = heads["parameters_before"] - heads["parameters_after"]
    return CheckOutcome(
        "heads_really_removed",
        passed=heads["heads_removed"] > 0 and drop == heads["expected_parameter_drop"],
        applies=True,
        metadata={
            "heads_removed": heads["heads_removed"],
            "parameter_drop": drop,
            "expected_parameter_drop": heads["expected_parameter_drop"],
            "heads_per_layer_after": heads["heads_per_layer_after"],
        },
    )


def exact_n_m_sparsity(store: ModelStore, manifest: Manifest, recipe: Recipe) -> CheckOutcome:
    """Every group of m weights in every pruned matrix holds at least n zeros, in the stored
    weights; groups with more zeros (weights that were already 0) are counted apart."""
    step = recipe.step("prune-weights")
    if step is None or not step["prune_n"]:
        return not_applicable("exact_n_m_sparsity")
    model, _ = load_variant(store, manifest, verify=False, quantize=False)
    n, m = step["prune_n"], step["prune_m"]
    # A group with fewer than n zeros breaks the pattern sparse kernels need; one with more does not.
    broken = sparsegpt.n_m_violations_by_layer(model, n, m)
    not_exact = sparsegpt.n_m_violations_by_layer(model, n, m, exact=True)
    layers = sparsegpt.prunable_layers(model).values()
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    total = sum(layer.weight.numel() for layer in layers)
    return CheckOutcome(
        "exact_n_m_sparsity",
        passed=bool(broken) and sum(broken.values()) == 0,
        applies=True,
        metadata={
            "violating_groups": sum(broken.values()),
            "groups_with_extra_zeros": sum(not_exact.values()) - sum(broken.values()),
            "pruned_matrices": len(broken),
            "sparsity": zeros / total,
        },
    )


def modules_really_quantized(details: dict) -> CheckOutcome:
    """Every quantizable linear layer became a quantized module (bitsandbytes, torch dynamic int8)
    or holds half-precision weights (bf16), counted after quantizing."""
    quantized = details.get("quantize")
    if quantized is None:
        return not_applicable("modules_really_quantized")
    count, expected = quantized["bnb_modules_found"], quantized["quantizable_linear_layers"]
    return CheckOutcome(
        "modules_really_quantized",
        passed=count > 0 and count == expected,
        applies=True,
        metadata={"quantized_modules": count, "quantizable_modules": expected, "scheme": quantized["scheme"]},
    )


def variant_checks(store: ModelStore, manifest: Manifest, recipe: Recipe, details: dict) -> list[CheckOutcome]:
    """The three checks of a built variant, from its manifest, recipe and step reports."""
    return [
        heads_really_removed(details),
        exact_n_m_sparsity(store, manifest, recipe),
        modules_really_quantized(details),
    ]
