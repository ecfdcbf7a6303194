import json

import pytest
import torch

from llmopt_assets.models.store import CorruptArtifactError, ModelStore
from llmopt_assets.techniques.loading import load_variant
from llmopt_assets_tests.tiny_models import random_token_ids, tiny_model, tiny_tokenizer


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "store")


def _write(store: ModelStore, arch: str = "gpt2", technique: str = "base"):
    return store.write_weights(
        "tiny", technique, tiny_model(arch), tiny_tokenizer(), recipe=[{"step": "load"}], parent_fingerprint=None
    )


def test_round_trip_gives_the_same_logits(store: ModelStore, arch: str) -> None:
    model = tiny_model(arch)
    manifest = store.write_weights(
        "tiny", "base", model, tiny_tokenizer(), recipe=[{"step": "load"}], parent_fingerprint=None
    )
    loaded, tokenizer = load_variant(store, manifest)
    ids = random_token_ids(1, 20)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-6)
    assert manifest.parameter_count == sum(p.numel() for p in model.parameters())
    assert manifest.bytes_on_disk > 0
    assert len(tokenizer) == len(tiny_tokenizer())
    assert store.manifest("tiny", "base") == manifest


def test_fingerprint_is_sha256_of_the_weights(store: ModelStore) -> None:
    import hashlib

    manifest = _write(store)
    path = store.artifact_dir("tiny", "base") / "model.safetensors"
    expected = hashlib.sha256(b"model.safetensors" + path.read_bytes()).hexdigest()
    assert manifest.fingerprint == expected


def test_derived_artifact_points_at_parent_weights(store: ModelStore) -> None:
    base = _write(store)
    derived = store.write_derived("tiny", "int8", base, recipe=[{"step": "quantize", "scheme": "int8"}], load={})
    assert derived.weights_dir == base.weights_dir
    assert derived.parent_fingerprint == base.fingerprint
    assert derived.fingerprint != base.fingerprint
    store.verify(derived)


def test_corrupt_weights_are_detected(store: ModelStore) -> None:
    manifest = _write(store)
    path = store.artifact_dir("tiny", "base") / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="do not match their manifest"):
        load_variant(store, manifest)


def test_truncated_weights_cannot_load_even_unverified(store: ModelStore) -> None:
    manifest = _write(store)
    path = store.artifact_dir("tiny", "base") / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptArtifactError):
        load_variant(store, manifest, verify=False)


def test_failed_write_leaves_nothing_half_written(store: ModelStore) -> None:
    first = _write(store)

    def explode(directory):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        store.write_weights(
            "tiny", "base", tiny_model("opt"), tiny_tokenizer(), recipe=[], parent_fingerprint=None,
            extra_files=explode,
        )
    # The previous artifact is intact and no staging directory is left behind.
    assert store.manifest("tiny", "base") == first
    store.verify(first)
    assert list((store.root / ".staging").iterdir()) == []


def test_missing_artifact_names_what_to_do(store: ModelStore) -> None:
    with pytest.raises(FileNotFoundError, match="materialize it first"):
        store.manifest("tiny", "nf4")


def test_manifest_is_plain_json(store: ModelStore) -> None:
    _write(store)
    document = json.loads((store.artifact_dir("tiny", "base") / "manifest.json").read_text())
    assert {"fingerprint", "parent_fingerprint", "recipe", "parameter_count", "bytes_on_disk"} <= set(document)
