"""Faults of issue 14 through the assets, on a tiny Llama from a local directory: base weights
replaced under a derived variant, truncated pruned weights, a one-line corpus, a partition key
that is a path, and which corpus and window a measurement row records."""

import hashlib
import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from llmopt_assets.defs.data.assets import calibration_corpus, eval_corpus
from llmopt_assets.defs.measurement.assets import perplexity_run
from llmopt_assets.defs.models.assets import base_model, compressed_variant
from llmopt_assets.defs.resources import (
    EvaluationProfileResource,
    project_resources,
)
from llmopt_assets.measure.corpus import WIKITEXT2_RAW_TEST, corpus_text
from llmopt_assets.models.store import ModelStore
from llmopt_assets_tests.tiny_models import tiny_model, tiny_tokenizer

MODEL = "tiny-llama"


def _save_weights(directory: Path, seed: int) -> None:
    tiny_model("llama", seed=seed).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("faults")
    weights = root / "weights"
    _save_weights(weights, seed=0)
    registry = root / "models.yaml"
    registry.write_text(f"models:\n  {MODEL}:\n    source: local\n    path: {weights}\n")
    resources = project_resources(
        root, EvaluationProfileResource(profile="smoke", repetitions=1, max_length=64, max_tokens=256)
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", [MODEL])
    prepared = dg.materialize([base_model, eval_corpus, calibration_corpus], partition_key=MODEL,
                              resources=resources, instance=instance)
    assert prepared.success
    return {"root": root, "weights": weights, "resources": resources, "instance": instance,
            "store": ModelStore(root / "store")}


def _variant(project: dict, technique: str, assets=(compressed_variant, perplexity_run)) -> dg.ExecuteInProcessResult:
    key = dg.MultiPartitionKey({"model": MODEL, "technique": technique})
    return dg.materialize([compressed_variant, perplexity_run], partition_key=key, resources=project["resources"],
                          instance=project["instance"], selection=list(assets), raise_on_error=False)


def _failure(result: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    return failure.step_failure_data.error.to_string()


def test_rows_record_the_corpus_and_the_window_set_in_the_profile(project: dict) -> None:
    assert _variant(project, "base").success
    rows = pl.read_parquet(project["root"] / "tables" / "perplexity_run" / f"{MODEL}__base.parquet")
    expected = hashlib.sha256(corpus_text(WIKITEXT2_RAW_TEST).encode()).hexdigest()
    assert rows["corpus_sha256"].to_list() == [expected]
    assert json.loads(rows["protocol"][0])["max_length"] == 64  # from the profile resource


def test_variant_of_replaced_base_weights_is_refused_then_rederived(project: dict) -> None:
    store = project["store"]
    assert _variant(project, "int8").success
    old_parent = store.manifest(MODEL, "int8").parent_fingerprint
    # The base re-materialized from different weights; int8 not yet.
    _save_weights(project["weights"], seed=1)
    assert dg.materialize([base_model], partition_key=MODEL, resources=project["resources"],
                          instance=project["instance"]).success
    new_base = store.manifest(MODEL, "base").fingerprint
    assert new_base != old_parent
    stale = _variant(project, "int8", assets=(perplexity_run,))
    assert not stale.success
    assert "int8 was derived from weights sha256" in _failure(stale) and "rematerialize" in _failure(stale)
    # Re-deriving records the new lineage, and the measurement names it.
    assert _variant(project, "int8").success
    assert store.manifest(MODEL, "int8").parent_fingerprint == new_base
    rows = pl.read_parquet(project["root"] / "tables" / "perplexity_run" / f"{MODEL}__int8.parquet")
    assert rows["parent_fingerprint"].to_list() == [new_base]


def test_truncated_pruned_weights_are_rebuilt_not_reused(project: dict) -> None:
    store = project["store"]
    assert _variant(project, "magnitude-2:4", assets=(compressed_variant,)).success
    weights = store.artifact_dir(MODEL, "magnitude-2:4") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    healed = _variant(project, "magnitude-2:4", assets=(compressed_variant,))
    assert healed.success
    store.verify(store.manifest(MODEL, "magnitude-2:4"))


def test_a_one_line_corpus_is_refused_and_the_good_one_kept(project: dict, tmp_path: Path, monkeypatch) -> None:
    stored = project["store"].corpus_path(MODEL, "eval")
    before = stored.read_bytes()
    one_line = tmp_path / "wiki.test.raw"
    one_line.write_text(" = Valkyria Chronicles III = \n")
    monkeypatch.setattr("llmopt_assets.defs.data.assets.WIKITEXT2_RAW_TEST", one_line)
    result = dg.materialize([eval_corpus], partition_key=MODEL, resources=project["resources"],
                            instance=project["instance"], raise_on_error=False)
    assert not result.success
    assert f"corpus {one_line} tokenizes to" in _failure(result) and "fewer than 2048" in _failure(result)
    assert stored.read_bytes() == before


@pytest.mark.parametrize("model", ["../../x", "a/b"])
def test_a_partition_key_that_is_a_path_reads_and_writes_nothing_outside(project: dict, model: str) -> None:
    instance = project["instance"]
    instance.add_dynamic_partitions("model", [model])
    key = dg.MultiPartitionKey({"model": model, "technique": "base"})
    result = dg.materialize([compressed_variant, perplexity_run], partition_key=key, resources=project["resources"],
                            instance=instance, selection=[perplexity_run], raise_on_error=False)
    assert not result.success
    assert "is not a model slug" in _failure(result)
    root = project["root"]
    assert not (root.parent / "x").exists() and not (root / "x").exists()
    assert sorted(p.name for p in root.iterdir()) == ["models.yaml", "store", "tables", "weights"]
