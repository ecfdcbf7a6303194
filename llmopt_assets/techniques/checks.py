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
    # ERROR: a failure means the technique's code is broken. WARN: the variant is not what its
    # name suggests, though nothing is broken (a head pruning that found no head to remove).
    severity: str = "ERROR"
    description: str | None = None  # why it failed or warned, in one sentence


def _no_head_met_criterion(heads: dict, details: dict) -> str:
    identical = details.get("identical_to")
    highest = heads.get("highest_concentration")
    scored = f"; the most concentrated head scored {highest:.3f}" if highest is not None else ""
    return (
        f"no head met the criterion ({heads.get('criterion', 'concentration')} > {heads['threshold']:g}{scored}): "
        "none removed, which is what the selection should do; the pruning code is not at fault, "
        f"but this variant is {identical or 'its parent'} unchanged, not a distinct technique"
    )


def not_applicable(name: str) -> CheckOutcome:
    return CheckOutcome(name, passed=True, applies=False)


def heads_really_removed(details: dict) -> CheckOutcome:
    """Heads were removed, and the parameter count fell by exactly what their projections held.

    When no head met the criterion, none was removed and the parameters did not change: the
    check does not pass (the variant's heads were not removed) but warns instead of failing
    (nothing is broken), says so, and names the variant it is identical to. A parameter drop
    that differs from the removed heads' projections is an error, with or without heads."""
    heads = details.get("prune-heads")
    if heads is None:
        return not_applicable("heads_really_removed")
    drop = heads["parameters_before"] - heads["parameters_after"]
    exact = drop == heads["expected_parameter_drop"]
    none_met = heads["heads_removed"] == 0 and exact
    metadata = {
        "heads_removed": heads["heads_removed"],
        "parameter_drop": drop,
        "expected_parameter_drop": heads["expected_parameter_drop"],
        "heads_per_layer_after": heads["heads_per_layer_after"],
        "no_head_met_criterion": none_met,
    }
    if none_met:
        metadata["identical_to"] = details.get("identical_to") or "its parent"
        return CheckOutcome(
            "heads_really_removed", passed=False, applies=True, metadata=metadata, severity="WARN",
            description=_no_head_met_criterion(heads, details),
        )
    return CheckOutcome(
        "heads_really_removed",
        passed=heads["heads_removed"] > 0 and exact,
        applies=True,
        metadata=metadata,
        description=None if exact else f"the parameters fell by {drop}, the removed heads held "
        f"{heads['expected_parameter_drop']}: the matrices were not sliced as the heads say",
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
