"""Shared set-up of the speed benchmarks (issue 15): the machine header every run prints, the
SmolLM2-135M weights as safetensors (de-quantized from the embedded GGUF once, then cached under
var/bench/), and the WikiText-2 token stream. Imports nothing from the test package."""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmopt_assets.measure.corpus import WIKITEXT2_RAW_TEST, corpus_text, tokenize_stream  # noqa: E402
from llmopt_assets.measure.hardware import hardware_info  # noqa: E402
from llmopt_assets.models.registry import load_registry  # noqa: E402
from llmopt_assets.models.sources import load_source  # noqa: E402
from llmopt_assets.paths import VAR_DIR  # noqa: E402

MODEL = "smollm2-135m"
CACHE = VAR_DIR / "bench" / MODEL


def header(title: str) -> None:
    """The benchmark's name, the machine and the library versions, printed first."""
    info = hardware_info()
    versions = {k: v for k, v in info["versions"].items() if v}
    print(f"# {title}")
    print(f"machine: {info['cpu_model']}, {info['usable_cores']} usable cores, "
          f"{info['ram_bytes'] / 2**30:.0f} GiB RAM, GPUs: {[g['name'] for g in info['gpus']] or 'none'}")
    print(f"torch threads: {torch.get_num_threads()}; python {info['python']}; {json.dumps(versions)}")
    print("(figures are from one run on this machine; other load on it shows as noise)\n")


def weights_dir() -> Path:
    """SmolLM2-135M as safetensors, written once from the embedded GGUF."""
    if not (CACHE / "config.json").is_file():
        model, tokenizer = load_source(load_registry()[MODEL])
        model.save_pretrained(CACHE)
        tokenizer.save_pretrained(CACHE)
    return CACHE


def load_model(dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    directory = weights_dir()
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa")
    return model.eval(), AutoTokenizer.from_pretrained(directory)


def wikitext_ids(tokenizer: PreTrainedTokenizerBase, tokens: int | None) -> torch.Tensor:
    ids = tokenize_stream(tokenizer, corpus_text(WIKITEXT2_RAW_TEST))
    return ids[:tokens] if tokens else ids


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
