"""What Dagster marks stale: only the variants that start from a retrained student, and every
result of an asset whose code version was bumped."""

import dataclasses
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from llmopt_assets.defs.data.assets import calibration_corpus, distillation_corpus
from llmopt_assets.defs.models.assets import base_model, compressed_variant, distilled_student
import llmopt_assets.techniques.variants as variants
from llmopt_assets.techniques import head_pruning
from llmopt_assets.defs.resources import (
    EvaluationProfileResource,
    project_resources,
)
from llmopt_assets_tests.tiny_models import tiny_model, tiny_tokenizer

MODEL = "tiny-gpt2"
ASSETS = [base_model, calibration_corpus, distillation_corpus, distilled_student, compressed_variant]
VARIANTS = ["base", "int8", "kd+int8"]


def variant(technique: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"model": MODEL, "technique": technique})


STUDENT = dg.MultiPartitionKey({"model": MODEL, "distillation": "kd"})


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("staleness")
    weights = root / "weights"
    tiny_model("gpt2").save_pretrained(weights)
    tiny_tokenizer().save_pretrained(weights)
    registry = root / "models.yaml"
    registry.write_text(f"models:\n  {MODEL}:\n    source: local\n    path: {weights}\n")
    resources = project_resources(root, EvaluationProfileResource(profile="smoke"))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", [MODEL])

    def materialize(asset: dg.AssetsDefinition, key: str) -> None:
        result = dg.materialize(ASSETS, selection=[asset], partition_key=key, resources=resources, instance=instance)
        assert result.success

    materialize(base_model, MODEL)
    materialize(calibration_corpus, MODEL)
    materialize(distillation_corpus, MODEL)
    materialize(distilled_student, STUDENT)
    for technique in VARIANTS:
        materialize(compressed_variant, variant(technique))
    return {"instance": instance, "materialize": materialize, "root": Path(root)}


def stale_status(instance: dg.DagsterInstance, assets: list, key: str, partition: str) -> StaleStatus:
    graph = AssetGraph.from_assets(assets)
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    return resolver.get_status(dg.AssetKey(key), partition)


def test_everything_is_fresh_after_a_first_materialization(pipeline: dict) -> None:
    for technique in VARIANTS:
        assert stale_status(pipeline["instance"], ASSETS, "compressed_variant", variant(technique)) == StaleStatus.FRESH


def test_retraining_the_student_makes_only_its_variants_stale(pipeline: dict) -> None:
    # Distillation is seeded: retraining from the same base gives the same weights and nothing
    # changes. A higher learning rate changes the student, as a new recipe or corpus would (more
    # steps might not: early stopping may keep the same best weights).
    instance = pipeline["instance"]
    smoke = variants.DISTILLATION_PRESETS["smoke"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(variants.DISTILLATION_PRESETS, "smoke", dataclasses.replace(smoke, learning_rate=2 * smoke.learning_rate))
        pipeline["materialize"](distilled_student, STUDENT)
    assert stale_status(instance, ASSETS, "compressed_variant", variant("base")) == StaleStatus.FRESH
    assert stale_status(instance, ASSETS, "compressed_variant", variant("int8")) == StaleStatus.FRESH
    assert stale_status(instance, ASSETS, "compressed_variant", variant("kd+int8")) == StaleStatus.STALE
    pipeline["materialize"](compressed_variant, variant("kd+int8"))
    assert stale_status(instance, ASSETS, "compressed_variant", variant("kd+int8")) == StaleStatus.FRESH


def with_code_version(asset: dg.AssetsDefinition, version: str) -> dg.AssetsDefinition:
    return asset.map_asset_specs(lambda spec: spec.replace_attributes(code_version=version))


def test_a_code_version_bump_makes_the_asset_stale(pipeline: dict) -> None:
    instance = pipeline["instance"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(head_pruning, "CODE_VERSION", "2")
        bumped = variants.variant_code_version()
    assert bumped != compressed_variant.code_versions_by_key[compressed_variant.key]
    graph = [base_model, calibration_corpus, distillation_corpus, distilled_student, with_code_version(compressed_variant, bumped)]
    resolver = CachingStaleStatusResolver(instance, AssetGraph.from_assets(graph), LoadingContextForTest(instance))
    # Code versions are per asset: every variant is stale, and Dagster says why.
    for technique in VARIANTS:
        assert resolver.get_status(compressed_variant.key, variant(technique)) == StaleStatus.STALE
    causes = resolver.get_stale_causes(compressed_variant.key, variant("int8"))
    assert [cause.category.name for cause in causes] == ["CODE"]


def test_a_student_code_bump_leaves_the_undistilled_variants_fresh(pipeline: dict) -> None:
    # The student's own result is stale; Dagster does not carry a stale partitioned parent's
    # status down to its children (they turn stale once the retrained student's data version
    # changes, as the retrain test shows), and never to a variant that does not read a student.
    instance = pipeline["instance"]
    graph = [base_model, calibration_corpus, distillation_corpus, with_code_version(distilled_student, "bumped"), compressed_variant]
    assert stale_status(instance, graph, "distilled_student", STUDENT) == StaleStatus.STALE
    for technique in ("base", "int8"):
        assert stale_status(instance, graph, "compressed_variant", variant(technique)) == StaleStatus.FRESH
