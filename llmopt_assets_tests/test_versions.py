"""A measurement's data version changes with everything its numbers depend on, and only then."""

import pytest
import torch

from llmopt_assets.measure.corpus import save_tokens
from llmopt_assets.measure.versions import corpus_sha256, measurement_data_version
from llmopt_assets.profiles import get_profile

BASIS = {
    "fingerprint": "a" * 64,
    "corpus_sha256": "c" * 64,
    "protocol": {"max_length": 512, "stride": 512, "dtype": "float32", "max_tokens": 1024},
    "profile": get_profile("smoke").to_dict(),
    "device": "cpu",
    "hardware": "0123456789ab",
}


@pytest.mark.parametrize(
    "change",
    [
        {"fingerprint": "b" * 64},
        {"corpus_sha256": "d" * 64},
        {"corpus_sha256": None},
        {"protocol": {**BASIS["protocol"], "dtype": "bfloat16"}},
        {"profile": get_profile("smoke", repetitions=5).to_dict()},
        {"profile": get_profile("smoke", cooldown_seconds=2.0).to_dict()},
        {"device": "cuda"},
        {"hardware": "ba9876543210"},
    ],
)
def test_every_input_changes_the_version(change: dict) -> None:
    assert measurement_data_version(**{**BASIS, **change}) != measurement_data_version(**BASIS)


def test_the_same_inputs_give_the_same_version() -> None:
    again = {**BASIS, "protocol": dict(reversed(list(BASIS["protocol"].items())))}  # order is not content
    assert measurement_data_version(**again) == measurement_data_version(**BASIS)


def test_corpus_hash_is_read_from_the_token_file(tmp_path) -> None:
    path = tmp_path / "eval.safetensors"
    save_tokens(path, torch.arange(10), {"text_sha256": "f" * 64})
    assert corpus_sha256(path) == "f" * 64
    save_tokens(path, torch.arange(10), {"source": "old"})
    assert corpus_sha256(path) is None
