"""The partition dimensions: models are added at run time, techniques come from the recipe rules."""

import dagster as dg

from llmopt_assets.techniques.recipe import technique_keys

model_partitions = dg.DynamicPartitionsDefinition(name="model")
technique_partitions = dg.StaticPartitionsDefinition(technique_keys())
# Dagster orders dimensions by name: keys read "model|technique", e.g. "gpt2|kd+int8+ah90".
variant_partitions = dg.MultiPartitionsDefinition(
    {"model": model_partitions, "technique": technique_partitions}
)
# A variant depends on its model's base weights, corpora and student.
model_of_variant = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="model")


def variant_key(context: dg.AssetExecutionContext) -> tuple[str, str]:
    """(model slug, technique key) of the partition being materialized."""
    key = context.partition_key
    assert isinstance(key, dg.MultiPartitionKey), f"expected a model×technique key, got {key!r}"
    return key.keys_by_dimension["model"], key.keys_by_dimension["technique"]
