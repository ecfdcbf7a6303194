"""Bad input names the file it came from, and one bad registry entry hides no good model."""

from pathlib import Path

import dagster as dg
import pytest

from llmopt_assets.measure.corpus import corpus_text, file_text, load_tokens
from llmopt_assets.models.registry import load_registry, read_registry

GOOD = "models:\n  good-model:\n    source: hub\n    id: org/good\n"


def test_a_yaml_error_names_the_registry_file(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  a: [unclosed\n")
    with pytest.raises(ValueError, match=f"model registry {path} is not valid YAML"):
        load_registry(path)


def test_a_malformed_entry_is_reported_and_the_good_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(GOOD + "  mymodel: local\n")
    reading = read_registry(path)
    assert list(reading.specs) == ["good-model"]
    assert "model 'mymodel': expected a mapping" in reading.problems["mymodel"]
    with pytest.raises(ValueError, match=f"model registry {path}: model 'mymodel'"):
        load_registry(path)


def test_the_registry_sensor_adds_good_models_despite_a_malformed_entry(tmp_path: Path) -> None:
    from llmopt_assets.defs import jobs
    from llmopt_assets.defs.resources import ModelRegistryResource

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text("{}")  # loadable as far as the sensor can tell
    path = tmp_path / "models.yaml"
    path.write_text(
        f"models:\n  good-model:\n    source: local\n    path: {weights}\n"
        "  mymodel: local\n  ../evil:\n    source: hub\n    id: x\n"
    )
    result = jobs.model_registry_sensor(
        dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral()),
        registry=ModelRegistryResource(path=str(path)),
    )
    added = {key for request in result.dynamic_partitions_requests for key in request.partition_keys}
    assert added == {"good-model"}


@pytest.mark.parametrize("read", [corpus_text, file_text])
def test_a_corpus_that_is_not_utf8_names_its_file(tmp_path: Path, read) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"corpus file {path} is not UTF-8"):
        read(path)


def test_a_token_file_with_a_broken_header_names_its_file(tmp_path: Path) -> None:
    path = tmp_path / "eval.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match=f"token file {path} is unreadable"):
        load_tokens(path)
