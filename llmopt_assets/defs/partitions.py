"""The partition dimensions: models are added at run time, techniques and distillation recipes
come from the recipe rules."""

import dagster as dg

from llmopt_assets.techniques.recipe import DISTILL, technique_keys, techniques_distilled_with

model_partitions = dg.DynamicPartitionsDefinition(name="model")
technique_partitions = dg.StaticPartitionsDefinition(technique_keys())
distillation_partitions = dg.StaticPartitionsDefinition(list(DISTILL))
# Dagster orders dimensions by name: keys read "model|technique", e.g. "gpt2|kd+int8+ah90".
variant_partitions = dg.MultiPartitionsDefinition(
    {"model": model_partitions, "technique": technique_partitions}
)
# Keys read "distillation|model", e.g. "kd-rkl|gpt2".
student_partitions = dg.MultiPartitionsDefinition(
    {"model": model_partitions, "distillation": distillation_partitions}
)
# A variant, or a student, depends on its model's base weights and corpora.
model_of_variant = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="model")
# Only a distilled variant depends on a student, the one its recipe names (kd+int8 on kd|model);
# base, int8, ah90... map to no student, so retraining a student leaves them fresh.
student_of_variant = dg.MultiPartitionMapping(
    {
        "model": dg.DimensionPartitionMapping("model", dg.IdentityPartitionMapping()),
        "distillation": dg.DimensionPartitionMapping(
            "technique",
            dg.StaticPartitionMapping({key: techniques_distilled_with(key) for key in DISTILL}),
        ),
    }
)


def variant_key(context: dg.AssetExecutionContext) -> tuple[str, str]:
    """(model slug, technique key) of the partition being materialized."""
    key = context.partition_key
    assert isinstance(key, dg.MultiPartitionKey), f"expected a model×technique key, got {key!r}"
    return key.keys_by_dimension["model"], key.keys_by_dimension["technique"]


def student_key(context: dg.AssetExecutionContext) -> tuple[str, str]:
    """(model slug, distillation key) of the student partition being materialized."""
    key = context.partition_key
    assert isinstance(key, dg.MultiPartitionKey), f"expected a model×distillation key, got {key!r}"
    return key.keys_by_dimension["model"], key.keys_by_dimension["distillation"]
