"""The paper's advanced-model pairs (Table 2, §3.3) from models-paper-table2.yaml: each
pre-compressed model with the progenitor it is measured against, loaded in bfloat16 from the
hub, refused before any download when the memory it needs is not there."""

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from llmopt_assets.measure.devices import check_memory_budget
from llmopt_assets.models.registry import ModelSpec, parse_registry
from llmopt_assets.paths import PROJECT_ROOT

PAPER_TABLE2 = PROJECT_ROOT / "models-paper-table2.yaml"
PRESET_DTYPE = "bfloat16"  # as the paper's advanced models are published and were run


@dataclass(frozen=True)
class AdvancedModel:
    spec: ModelSpec
    progenitor: str | None  # slug of the teacher / unpruned model; None for a progenitor itself
    technique: str
    parameters_b: float  # nominal size in billions, for the memory check before downloading
    id_checked: bool  # the hub id is named by its publisher (False: follows the release's naming)

    @property
    def parameter_count(self) -> int:
        return int(self.parameters_b * 1e9)


def load_presets(path: Path = PAPER_TABLE2) -> dict[str, AdvancedModel]:
    document = yaml.safe_load(path.read_text())
    specs = parse_registry(document)
    pairs = document.get("pairs") or {}
    if set(pairs) != set(specs):
        raise ValueError(f"{path}: models and pairs must name the same slugs; differ in {sorted(set(pairs) ^ set(specs))}")
    presets = {}
    for slug, pair in pairs.items():
        progenitor = pair.get("progenitor")
        if progenitor is not None and progenitor not in specs:
            raise ValueError(f"{path}: {slug}'s progenitor {progenitor!r} is not one of its models")
        presets[slug] = AdvancedModel(
            spec=specs[slug], progenitor=progenitor, technique=str(pair["technique"]),
            parameters_b=float(pair["parameters_b"]), id_checked=bool(pair["id_checked"]),
        )
    return presets


def comparison_pairs(presets: dict[str, AdvancedModel]) -> list[tuple[str, str]]:
    """(model, progenitor) for every pre-compressed model, in file order."""
    return [(slug, p.progenitor) for slug, p in presets.items() if p.progenitor is not None]


def load_preset(preset: AdvancedModel, budget_bytes: int, device: str = "cpu"):
    """(model, tokenizer) in bfloat16 from the hub, after checking the memory it needs fits
    `budget_bytes` (MemoryBudgetError, naming the need, before anything is downloaded)."""
    check_memory_budget(preset.parameter_count, PRESET_DTYPE, budget_bytes, preset.spec.slug)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(preset.spec.location)
    model = AutoModelForCausalLM.from_pretrained(preset.spec.location, dtype=torch.bfloat16).to(device)
    return model.eval(), tokenizer
