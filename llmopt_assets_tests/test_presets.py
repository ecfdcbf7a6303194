"""The paper's Table 2 pairs: every compressed model names its progenitor, big ones are refused
before any download with the memory they need."""

import pytest

from llmopt_assets.measure.devices import MemoryBudgetError
from llmopt_assets.models import presets
from llmopt_assets.models.registry import load_registry


def test_table2_pairs_as_the_paper_lists_them() -> None:
    table = presets.load_presets()
    pairs = dict(presets.comparison_pairs(table))
    # Table 2: Sheared-LLaMA 2.7B / 1.3B from Llama-2-7B, the Minitrons from Mistral-NeMo and
    # Llama-3.1-8B, MiniLLM / KD / SeqKD OPT-6.7B from OPT-13B and Llama-7B students from Llama-13B.
    assert pairs["sheared-llama-2.7b"] == pairs["sheared-llama-1.3b"] == "llama-2-7b"
    assert pairs["mistral-nemo-minitron-8b"] == "mistral-nemo-base"
    assert pairs["llama-3.1-minitron-4b-width"] == "llama-3.1-8b"
    assert {pairs[f"minillm-{k}opt-6.7b"] for k in ("", "kd-", "seqkd-", "sft-")} == {"opt-13b"}
    assert {pairs[f"minillm-{k}llama-7b"] for k in ("", "kd-", "seqkd-", "sft-")} == {"llama-13b"}
    assert table["llama-2-7b"].spec.location == "meta-llama/Llama-2-7b-hf"
    # The same file is a registry in models.yaml's format.
    assert set(load_registry(presets.PAPER_TABLE2)) == set(table)


def test_too_big_for_the_budget_is_refused_before_downloading(monkeypatch) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("nothing may be downloaded before the memory check")

    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_download)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_download)
    nemo = presets.load_presets()["mistral-nemo-base"]
    # 12.2e9 parameters × 2 bytes (bf16) × 1.25 allowance = 30.5e9 bytes = 28.405 GiB
    with pytest.raises(MemoryBudgetError, match=r"mistral-nemo-base: 12,200,000,000 parameters in bfloat16 need about 28\.41 GiB"):
        presets.load_preset(nemo, budget_bytes=24 * 2**30)
