"""The registry sensor reads the `registry` resource's file and adds only the models this machine
can load; the others are offered with the reason, never added as partitions that stay missing."""

import dagster as dg
import pytest

import llmopt_assets.models.sources as sources
from llmopt_assets.defs.jobs import model_registry_sensor
from llmopt_assets.defs.resources import ModelRegistryResource
from llmopt_assets_tests.tiny_models import tiny_model, tiny_tokenizer


@pytest.fixture
def registry(tmp_path) -> ModelRegistryResource:
    weights = tmp_path / "tiny"
    tiny_model("gpt2").save_pretrained(weights)
    tiny_tokenizer().save_pretrained(weights)
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        f"  tiny:\n    source: local\n    path: {weights}\n"
        f"  gone:\n    source: local\n    path: {tmp_path / 'deleted'}\n"
        "  hub-model:\n    source: hub\n    id: example-org/never-downloaded\n"
    )
    return ModelRegistryResource(path=str(path))


def evaluate(instance: dg.DagsterInstance, registry: ModelRegistryResource) -> dg.SensorResult:
    return model_registry_sensor(dg.build_sensor_context(instance=instance, resources={"registry": registry}))


def added(result: dg.SensorResult) -> set[str]:
    return {key for request in result.dynamic_partitions_requests for key in request.partition_keys}


def test_offline_only_loadable_models_become_partitions(registry, monkeypatch) -> None:
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)
    instance = dg.DagsterInstance.ephemeral()
    result = evaluate(instance, registry)
    assert added(result) == {"tiny"}
    message = result.skip_reason.skip_message
    assert "hub-model" in message and "not reachable" in message
    assert "gone" in message and "no save_pretrained model" in message
    instance.add_dynamic_partitions("model", ["tiny"])
    assert added(evaluate(instance, registry)) == set()  # each model added once


def test_hub_models_are_added_when_the_hub_answers(registry, monkeypatch) -> None:
    monkeypatch.setattr(sources, "hub_reachable", lambda: True)
    result = evaluate(dg.DagsterInstance.ephemeral(), registry)
    assert added(result) == {"tiny", "hub-model"}
    assert "hub-model" not in result.skip_reason.skip_message
