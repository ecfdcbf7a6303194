"""Model weights: the base model, the distilled student and every compressed variant."""

import dagster as dg

from llmopt_assets.defs.partitions import (
    model_of_variant,
    model_partitions,
    student_key,
    student_of_variant,
    student_partitions,
    variant_key,
    variant_partitions,
)
from llmopt_assets.defs.resources import (
    ComputeResource,
    EvaluationProfileResource,
    ModelRegistryResource,
    ModelStoreResource,
)
from llmopt_assets.models import sources
from llmopt_assets.models.sources import load_source
from llmopt_assets.models.store import Manifest
from llmopt_assets.techniques.checks import CheckOutcome, variant_checks
from llmopt_assets.techniques.recipe import BASE, parse
from llmopt_assets.techniques.variants import (
    materialize_variant,
    student_code_version,
    train_student,
    variant_code_version,
)



def manifest_metadata(manifest: Manifest) -> dict:
    return {
        "fingerprint": manifest.fingerprint,
        "parent_fingerprint": manifest.parent_fingerprint or "",
        "parameters": dg.MetadataValue.int(manifest.parameter_count),
        "bytes_on_disk": dg.MetadataValue.int(manifest.bytes_on_disk),
        "recipe": dg.MetadataValue.json(manifest.recipe),
        "load": dg.MetadataValue.json(manifest.load),
        "weights_dir": manifest.weights_dir,
    }


@dg.asset(
    partitions_def=model_partitions,
    group_name="models",
    kinds={"pytorch", "safetensors"},
    code_version=sources.CODE_VERSION,
)
def base_model(
    context: dg.AssetExecutionContext, registry: ModelRegistryResource, model_store: ModelStoreResource
) -> dg.MaterializeResult:
    """The model as loaded from its source (hub id, local directory or embedded GGUF), in fp32,
    saved to the model store: the reference every change ratio is measured against."""
    spec = registry.spec(context.partition_key)
    model, tokenizer = load_source(spec)
    manifest = model_store.store().write_weights(
        spec.slug,
        BASE,
        model,
        tokenizer,
        recipe=[{"step": "load", "source": spec.source, "location": spec.location}],
        parent_fingerprint=None,
        details={"notes": spec.notes, "architecture": model.config.model_type},
    )
    context.log.info(f"{spec.slug}: {manifest.parameter_count:,} parameters, sha256 {manifest.fingerprint[:12]}")
    return dg.MaterializeResult(
        metadata=manifest_metadata(manifest), data_version=dg.DataVersion(manifest.fingerprint[:16])
    )


@dg.asset(
    partitions_def=student_partitions,
    deps=[
        dg.AssetDep("base_model", partition_mapping=model_of_variant),
        dg.AssetDep("calibration_corpus", partition_mapping=model_of_variant),
    ],
    group_name="models",
    kinds={"pytorch", "safetensors"},
    pool="cpu",
    code_version=student_code_version(),
)
def distilled_student(
    context: dg.AssetExecutionContext,
    registry: ModelRegistryResource,
    model_store: ModelStoreResource,
    profile: EvaluationProfileResource,
    compute: ComputeResource,
) -> dg.MaterializeResult:
    """A student per distillation recipe: half the teacher's layers trained on its soft labels on
    the held-apart WikiText-2 valid split, with forward KL and temperature (`kd`, the DistilGPT2
    recipe) or reverse KL (`kd-rkl`, MiniLLM-style); or the registry's published student
    (gpt2 -> distilgpt2) for `kd`, for paper parity. Only the kd* variants depend on it."""
    compute.apply_threads()
    slug, distillation = student_key(context)
    manifest = train_student(
        model_store.store(), slug, distillation, profile.get(), registry.spec(slug), context.log.info,
        device=compute.resolved_device(),
    )
    details = manifest.details
    # A published student has no training loss of ours: the entry is left out, not 0.
    loss = {"final_loss": dg.MetadataValue.float(details["final_loss"])} if "final_loss" in details else {}
    return dg.MaterializeResult(
        metadata={**manifest_metadata(manifest), **loss, "distillation": dg.MetadataValue.json(details)},
        data_version=dg.DataVersion(manifest.fingerprint[:16]),
    )


VARIANT_CHECKS = [
    dg.AssetCheckSpec("heads_really_removed", asset="compressed_variant"),
    dg.AssetCheckSpec("exact_n_m_sparsity", asset="compressed_variant"),
    dg.AssetCheckSpec("modules_really_quantized", asset="compressed_variant"),
]


@dg.asset(
    partitions_def=variant_partitions,
    deps=[
        dg.AssetDep("base_model", partition_mapping=model_of_variant),
        dg.AssetDep("distilled_student", partition_mapping=student_of_variant),
        dg.AssetDep("calibration_corpus", partition_mapping=model_of_variant),
    ],
    check_specs=VARIANT_CHECKS,
    group_name="models",
    kinds={"pytorch", "safetensors"},
    pool="cpu",
    code_version=variant_code_version(),
)
def compressed_variant(
    context: dg.AssetExecutionContext,
    model_store: ModelStoreResource,
    profile: EvaluationProfileResource,
    compute: ComputeResource,
):
    """The model after its technique's recipe, in a fixed order: distil (the student), prune
    (attention heads, then SparseGPT / magnitude weights), quantize (bitsandbytes, applied when the
    variant is loaded). Checks: heads really removed, exact 2:4 pattern, modules really quantized."""
    compute.apply_threads()
    slug, technique = variant_key(context)
    recipe = parse(technique)
    store = model_store.store()
    manifest, details = materialize_variant(
        store, slug, recipe, profile.get(), context.log.info, compute.resolved_device()
    )
    yield dg.MaterializeResult(
        metadata={**manifest_metadata(manifest), "details": dg.MetadataValue.json(details)},
        data_version=dg.DataVersion(manifest.fingerprint[:16]),
    )
    for outcome in variant_checks(store, manifest, recipe, details):
        yield check_result(outcome)


def check_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    """A core check outcome as a Dagster check result, numbers as numbers, lists as JSON."""

    def value(item: object) -> object:
        if isinstance(item, (bool, str)):
            return item
        if isinstance(item, int):
            return dg.MetadataValue.int(item)
        if isinstance(item, float):
            return dg.MetadataValue.float(item)
        return dg.MetadataValue.json(item)

    metadata = {name: value(item) for name, item in outcome.metadata.items()} if outcome.applies else {"applies": False}
    return dg.AssetCheckResult(check_name=outcome.name, passed=outcome.passed, metadata=metadata)
