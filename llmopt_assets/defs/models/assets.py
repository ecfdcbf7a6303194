"""Model weights: the base model, the distilled student and every compressed variant."""

from pathlib import Path

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
    device_step,
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
    metadata = {
        "fingerprint": manifest.fingerprint,
        "parent_fingerprint": manifest.parent_fingerprint or "",
        "parameters": dg.MetadataValue.int(manifest.parameter_count),
        "bytes_on_disk": dg.MetadataValue.int(manifest.bytes_on_disk),
        "recipe": dg.MetadataValue.json(manifest.recipe),
        "load": dg.MetadataValue.json(manifest.load),
        "weights_dir": manifest.weights_dir,
    }
    owner = "/".join(Path(manifest.weights_dir).parts[-2:])
    if owner != f"{manifest.model}/{manifest.technique}":
        # A derived variant (e.g. int8 = the base's weights, quantized when loaded) writes no
        # weights of its own: its 0 bytes are counted under the artifact that holds them.
        metadata["weights_shared_with"] = dg.MetadataValue.text(
            f"{owner}: 0 bytes of its own; loads those weights (counted there)"
        )
    return metadata


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
        dg.AssetDep("distillation_corpus", partition_mapping=model_of_variant),
    ],
    group_name="models",
    kinds={"pytorch", "safetensors"},
    code_version=student_code_version(),
    **device_step("gpu"),  # training: a GPU step where there is one
)
def distilled_student(
    context: dg.AssetExecutionContext,
    registry: ModelRegistryResource,
    model_store: ModelStoreResource,
    profile: EvaluationProfileResource,
    compute: ComputeResource,
) -> dg.MaterializeResult:
    """A student per distillation recipe: half the teacher's layers trained on its soft labels on
    the distillation corpus (text sampled from the teacher by default; a validation slice held
    out for early stopping), with forward KL and temperature (`kd`, the DistilGPT2
    recipe) or reverse KL (`kd-rkl`, MiniLLM-style); or the registry's published student
    (gpt2 -> distilgpt2) for `kd`, for paper parity. Only the kd* variants depend on it."""
    slug, distillation = student_key(context)
    store = model_store.store()
    # The teacher (the base) is in memory while the student trains.
    device = compute.prepare(context.log, store.manifest(slug, BASE).parameter_count, f"{slug}|{distillation}")
    manifest = train_student(
        store, slug, distillation, profile.get(), registry.spec(slug), context.log.info, device=device,
    )
    details = manifest.details
    # A published student has no training loss of ours: the entry is left out, not 0.
    loss = {"final_loss": dg.MetadataValue.float(details["final_loss"])} if "final_loss" in details else {}
    return dg.MaterializeResult(
        metadata={**manifest_metadata(manifest), **loss, "distillation": dg.MetadataValue.json(details)},
        data_version=dg.DataVersion(manifest.fingerprint[:16]),
    )


VARIANT_CHECKS = [
    dg.AssetCheckSpec(
        "heads_really_removed",
        asset="compressed_variant",
        description="Head-pruned variants only: at least one head removed, and the parameter count "
        "dropped by exactly the removed heads' q/k/v/o slices (the matrices really shrank). When no "
        "head met the criterion (e.g. a small distilled student at 90%), none is removed: the check "
        "WARNS (yellow, not red: the pruning code did what it should) with no_head_met_criterion "
        "and identical_to (the variant it equals, e.g. kd for kd+ah90) in its metadata; the score "
        "table and the report flag that row as identical, not a distinct technique.",
    ),
    dg.AssetCheckSpec(
        "exact_n_m_sparsity",
        asset="compressed_variant",
        description="N:M-pruned variants only (e.g. sparsegpt-2:4): every group of M consecutive "
        "input weights of every pruned matrix holds at least N zeros, the pattern sparse kernels need.",
    ),
    dg.AssetCheckSpec(
        "modules_really_quantized",
        asset="compressed_variant",
        description="Quantized variants only (int8, nf4, fp4): once loaded, every quantizable linear "
        "layer is a bitsandbytes module.",
    ),
]


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "compressed_variant",
            deps=[
                dg.AssetDep("base_model", partition_mapping=model_of_variant),
                dg.AssetDep("distilled_student", partition_mapping=student_of_variant),
                dg.AssetDep("calibration_corpus", partition_mapping=model_of_variant),
            ],
            group_name="models",
            kinds={"pytorch", "safetensors"},
            code_version=variant_code_version(),
            description="The model after its technique's recipe, in a fixed order: distil (the "
            "student), prune (attention heads, then SparseGPT / magnitude weights), quantize "
            "(bitsandbytes, applied when the variant is loaded).",
        )
    ],
    partitions_def=variant_partitions,
    check_specs=VARIANT_CHECKS,
    # Subsettable so that a check which does not apply to the technique yields no result: the UI
    # then shows it as skipped (not executed), never as passed.
    can_subset=True,
    **device_step("cpu"),
)
def compressed_variant(
    context: dg.AssetExecutionContext,
    model_store: ModelStoreResource,
    profile: EvaluationProfileResource,
    compute: ComputeResource,
):
    """Builds the variant and checks it: heads really removed, exact N:M pattern, modules really
    quantized, each only where the technique applies it."""
    slug, technique = variant_key(context)
    recipe = parse(technique)
    store = model_store.store()
    if dg.AssetKey("compressed_variant") in context.selected_asset_keys:
        # The base is the largest model any recipe starts from (a student is smaller).
        device = compute.prepare(context.log, store.manifest(slug, BASE).parameter_count, f"{slug}|{technique}")
        manifest, details = materialize_variant(store, slug, recipe, profile.get(), context.log.info, device)
        yield dg.MaterializeResult(
            metadata={**manifest_metadata(manifest), "details": dg.MetadataValue.json(details)},
            data_version=dg.DataVersion(manifest.fingerprint[:16]),
        )
    else:  # only checks selected: check the variant already in the store
        manifest = store.manifest(slug, technique)
        details = manifest.details
    selected = {key.name for key in context.selected_asset_check_keys}
    for outcome in variant_checks(store, manifest, recipe, details):
        # A check that does not apply yields no result: the UI shows it as skipped, not passed.
        if outcome.applies and outcome.name in selected:
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

    metadata = {name: value(item) for name, item in outcome.metadata.items()}
    return dg.AssetCheckResult(
        check_name=outcome.name,
        passed=outcome.passed,
        metadata=metadata,
        severity=dg.AssetCheckSeverity(outcome.severity),
        description=outcome.description,
    )
