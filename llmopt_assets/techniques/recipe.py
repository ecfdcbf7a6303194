"""Technique keys ('kd+int8+ah90') and the recipes they stand for.

A key names at most one technique from each family, joined by '+'. Whatever the order written,
the steps are applied in a fixed order: distil, then prune (heads, then weights), then quantize
(the paper's combinations, Table 1). The technique partition list is generated from these rules.
"""

import itertools
from dataclasses import dataclass

# int8-dyn on torch._int_mm (issue 15), and the MLP output projection under each family's name
# (Llama, OPT, GPT-2: GPT-2's attention output is also c_proj, hence the dotted suffix).
INT8_DYN_INT_MM = {"activation_scaling": "per-token", "int8_kernel": "int_mm", "smoothquant_alpha": 0.5}
MLP_OUTPUT = ("down_proj", "fc2", "mlp.c_proj")

# Each family: key -> step. The key order inside a family is the order in generated lists.
DISTILL = {
    "kd": {"step": "distill", "divergence": "forward"},
    "kd-rkl": {"step": "distill", "divergence": "reverse"},  # MiniLLM-style reverse KL
}
PRUNE_HEADS = {
    "ah90": {"step": "prune-heads", "threshold": 0.9},
    "ah80": {"step": "prune-heads", "threshold": 0.8},
}
PRUNE_WEIGHTS = {
    "sparsegpt-2:4": {"step": "prune-weights", "method": "sparsegpt", "prune_n": 2, "prune_m": 4, "sparsity": 0.5},
    "sparsegpt-50": {"step": "prune-weights", "method": "sparsegpt", "prune_n": 0, "prune_m": 0, "sparsity": 0.5},
    "magnitude-2:4": {"step": "prune-weights", "method": "magnitude", "prune_n": 2, "prune_m": 4, "sparsity": 0.5},
}
QUANTIZE = {
    "int8": {"step": "quantize", "scheme": "int8"},  # bitsandbytes LLM.int8
    # The paper's "4-bit" is bitsandbytes through HF with load_in_4bit=True and nothing else:
    # the library default, FP4 codes with fp32 compute. NF4 (QLoRA's code) is run beside it.
    "fp4": {"step": "quantize", "scheme": "fp4"},
    "nf4": {"step": "quantize", "scheme": "nf4"},
    # Beyond the paper (issue 15), for the CPU: torch's dynamic int8 kernels, and bfloat16
    # weights and compute. bf16 is a precision, not a quantizer, but it composes the same way:
    # one per variant, applied at load over the parent's (pruned / distilled) weights.
    # int8-dyn: SmoothQuant (Xiao et al. 2023) factors at the paper's α = 0.5 folded into the
    # weights, then int8 x int8 -> int32 through torch._int_mm with one activation scale per token,
    # the quantize and rescale passes fused by torch.compile (quantization.PerTokenInt8Linear), the
    # MLP's output projection (its input has the widest outliers) and lm_head kept in fp32: the
    # fastest candidate under 1% perplexity in issue 15's profile (benchmarks/README.md). Named
    # alternatives: int8-dyn-full (the MLP output in int8 too), int8-dyn-lmhead (lm_head in int8
    # too), int8-dyn-fbgemm (per-token scales on torch's fbgemm layer: the default before),
    # int8-dyn-tensor (torch's layer as is, one scale per activation tensor: 3x the perplexity).
    "int8-dyn": {"step": "quantize", "scheme": "int8-dyn", **INT8_DYN_INT_MM, "fp32_modules": list(MLP_OUTPUT)},
    "int8-dyn-full": {"step": "quantize", "scheme": "int8-dyn", **INT8_DYN_INT_MM},
    "int8-dyn-lmhead": {"step": "quantize", "scheme": "int8-dyn", **INT8_DYN_INT_MM,
                        "fp32_modules": list(MLP_OUTPUT), "quantize_lm_head": True},
    "int8-dyn-fbgemm": {"step": "quantize", "scheme": "int8-dyn", "activation_scaling": "per-token", "smoothquant_alpha": 0.5},
    "int8-dyn-tensor": {"step": "quantize", "scheme": "int8-dyn", "activation_scaling": "per-tensor"},
    "bf16": {"step": "quantize", "scheme": "bf16"},
}
# Families in application order; key order when written: kd, quantization, pruning (as the
# paper writes "Knowledge Distilled, 8-Bit, 90% AH").
FAMILIES = {"distill": DISTILL, "prune-heads": PRUNE_HEADS, "prune-weights": PRUNE_WEIGHTS, "quantize": QUANTIZE}
KEY_ORDER = ("distill", "quantize", "prune-heads", "prune-weights")
ALIASES = {"4bit": "fp4", "8bit": "int8"}  # the paper's names; "4bit" is its FP4 (see QUANTIZE)
BASE = "base"


class RecipeError(ValueError):
    """An unknown technique key or a combination that cannot work."""


@dataclass(frozen=True)
class Recipe:
    key: str  # canonical
    steps: tuple[dict, ...]  # in application order

    def step(self, kind: str) -> dict | None:
        return next((s for s in self.steps if s["step"] == kind), None)

    @property
    def weight_steps(self) -> tuple[dict, ...]:
        """Steps that produce new weights (everything but quantization, applied at load)."""
        return tuple(s for s in self.steps if s["step"] != "quantize")

    @property
    def weights_key(self) -> str:
        """The technique whose weights this one uses: itself without quantization (applied at
        load), so nf4+ah80 and int8+ah80 share the ah80 weights."""
        parts = [s["key"] for s in self.steps if s["step"] != "quantize"]
        return parse("+".join(parts)).key if parts else BASE

    def without(self, kind: str) -> str:
        """The key of this recipe without its `kind` step ('kd+nf4+ah90' without prune-heads:
        'kd+nf4'); base when nothing is left."""
        return parse(_join(*(s["key"] for s in self.steps if s["step"] != kind))).key

    @property
    def parent_key(self) -> str:
        """The technique whose weights this one starts from: its distillation, or base."""
        distill = self.step("distill")
        return distill["key"] if distill else BASE


def _family_of(part: str) -> str:
    for family, members in FAMILIES.items():
        if part in members:
            return family
    raise RecipeError(
        f"unknown technique {part!r}. Valid keys: {', '.join(technique_keys())}; "
        "combine one per family with '+': distillation (kd, kd-rkl), quantization "
        "(int8, fp4, nf4, int8-dyn, int8-dyn-full, int8-dyn-lmhead, int8-dyn-fbgemm, int8-dyn-tensor, bf16), head pruning (ah90, ah80), weight pruning "
        "(sparsegpt-2:4, sparsegpt-50, magnitude-2:4)"
    )


def parse(key: str) -> Recipe:
    """The recipe for a technique key; refuses unknown parts and impossible combinations."""
    cleaned = key.strip().lower()
    if cleaned == BASE:
        return Recipe(BASE, ())
    parts = [ALIASES.get(p.strip(), p.strip()) for p in cleaned.split("+")]
    if not all(parts):
        raise RecipeError(f"technique key {key!r} has an empty part")
    if BASE in parts:
        raise RecipeError(f"'base' cannot be combined with other techniques (got {key!r})")
    by_family: dict[str, str] = {}
    for part in parts:
        family = _family_of(part)
        if family in by_family:
            raise RecipeError(
                f"{key!r} combines {by_family[family]!r} and {part!r}: at most one {family} "
                f"technique per variant. Valid keys: {', '.join(technique_keys())}"
            )
        by_family[family] = part
    steps = tuple({"key": by_family[f], **FAMILIES[f][by_family[f]]} for f in FAMILIES if f in by_family)
    canonical = "+".join(by_family[f] for f in KEY_ORDER if f in by_family)
    return Recipe(canonical, steps)


def _join(*parts: str | None) -> str:
    chosen = [p for p in parts if p]
    return "+".join(chosen) if chosen else BASE


def technique_keys() -> list[str]:
    """Every technique partition: the paper's grid (Table 1 and the standalone rows) with its
    "4-bit" as FP4 and again as NF4, SparseGPT with each quantization, and the single-technique
    extensions (unstructured SparseGPT, magnitude 2:4 baseline, reverse-KL distillation), and the CPU
    precisions int8-dyn and bf16 alone and combined with distillation and pruning."""
    quantizations = (None, "int8", "fp4", "nf4")  # the paper's 8-bit and 4-bit (FP4, and NF4)
    paper_grid = [
        _join(kd, quant, heads)
        for kd, quant, heads in itertools.product((None, "kd"), quantizations, (None, *PRUNE_HEADS))
    ]
    sparse_grid = [_join(quant, "sparsegpt-2:4") for quant in quantizations]
    extensions = ["magnitude-2:4", "sparsegpt-50", "kd-rkl"]
    # The CPU-fast precisions with the paper's combinations (issue 15).
    cpu_grid = [
        _join(kd, "int8-dyn", heads) for kd, heads in itertools.product((None, "kd"), (None, "ah90"))
    ] + ["int8-dyn+sparsegpt-2:4", "bf16", "kd+bf16"]
    return paper_grid + sparse_grid + extensions + cpu_grid


def techniques_distilled_with(distillation: str) -> list[str]:
    """The technique partitions whose weights start from this distillation's student
    ('kd' -> kd, kd+int8, kd+ah90, ...): the only variants a retrained student makes stale."""
    if distillation not in DISTILL:
        raise RecipeError(f"unknown distillation {distillation!r}; valid: {', '.join(DISTILL)}")
    return [key for key in technique_keys() if parse(key).parent_key == distillation]
