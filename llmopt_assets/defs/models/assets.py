"""Model weights: the base model, the distilled student and every compressed variant."""

import dagster as dg

from llmopt_assets.defs.partitions import model_of_variant, model_partitions, variant_key, variant_partitions
from llmopt_assets.defs.resources import (
    ComputeResource,
    EvaluationProfileResource,
    ModelRegistryResource,
    ModelStoreResource,
)
from llmopt_assets.measure.corpus import load_tokens
from llmopt_assets.models.sources import load_source
from llmopt_assets.models.registry import ModelSpec
from llmopt_assets.models.store import Manifest, ModelStore
from llmopt_assets.techniques import head_pruning, quantization, sparsegpt
from llmopt_assets.techniques.recipe import BASE, parse
from llmopt_assets.techniques.variants import build_student, prune, weights_recipe



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


@dg.asset(partitions_def=model_partitions, group_name="models", kinds={"pytorch", "safetensors"})
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
    partitions_def=model_partitions,
    deps=["base_model", "calibration_corpus"],
    group_name="models",
    kinds={"pytorch", "safetensors"},
)
def distilled_student(
    context: dg.AssetExecutionContext,
    registry: ModelRegistryResource,
    model_store: ModelStoreResource,
    profile: EvaluationProfileResource,
    compute: ComputeResource,
) -> dg.MaterializeResult:
    """A student with half the teacher's layers, trained on the teacher's soft labels (forward KL
    with temperature, DistilGPT2 recipe) on the held-apart WikiText-2 valid split; or the
    registry's published student (gpt2 -> distilgpt2) for paper parity."""
    compute.apply_threads()
    slug = context.partition_key
    manifest = train_student(
        model_store.store(), slug, "forward", profile, registry.spec(slug), context.log.info,
        device=compute.resolved_device(),
    )
    details = manifest.details
    return dg.MaterializeResult(
        metadata={
            **manifest_metadata(manifest),
            "final_loss": dg.MetadataValue.float(float(details.get("final_loss", float("nan")))),
            "distillation": dg.MetadataValue.json(details),
        },
        data_version=dg.DataVersion(manifest.fingerprint[:16]),
    )


def train_student(
    store: ModelStore,
    slug: str,
    divergence: str,
    profile: EvaluationProfileResource,
    spec: ModelSpec,
    log,
    device: str = "cpu",
) -> Manifest:
    """Distil the base model into a student and store it as the 'kd' (or 'kd-rkl') artifact."""
    key = "kd" if divergence == "forward" else "kd-rkl"
    teacher_manifest = store.manifest(slug, BASE)
    teacher, tokenizer = store.load(teacher_manifest, device=device)
    stream = load_tokens(store.corpus_path(slug, "calibration"))
    student, details = build_student(teacher, stream, profile.get(), divergence, spec, log=log)
    return store.write_weights(
        slug, key, student, tokenizer,
        recipe=[{"step": "distill", "key": key, "divergence": divergence}],
        parent_fingerprint=teacher_manifest.fingerprint,
        details=details,
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
        dg.AssetDep("distilled_student", partition_mapping=model_of_variant),
        dg.AssetDep("calibration_corpus", partition_mapping=model_of_variant),
    ],
    check_specs=VARIANT_CHECKS,
    group_name="models",
    kinds={"pytorch", "safetensors"},
    pool="cpu",
)
def compressed_variant(
    context: dg.AssetExecutionContext,
    model_store: ModelStoreResource,
    profile: EvaluationProfileResource,
    compute: ComputeResource,
    registry: ModelRegistryResource,
):
    """The model after its technique's recipe, in a fixed order: distil (the student), prune
    (attention heads, then SparseGPT / magnitude weights), quantize (bitsandbytes, applied when the
    variant is loaded). Checks: heads really removed, exact 2:4 pattern, modules really quantized."""
    compute.apply_threads()
    slug, technique = variant_key(context)
    recipe = parse(technique)
    store = model_store.store()
    full_recipe = [dict(step) for step in recipe.steps]
    quant = recipe.step("quantize")
    load = {"quantization": quant["scheme"]} if quant else {}
    prunes = recipe.step("prune-heads") or recipe.step("prune-weights")
    parent_key = recipe.parent_key
    if parent_key == "kd-rkl" and not store.exists(slug, "kd-rkl"):
        # The reverse-KL student is only used by this technique: it is trained here, on demand.
        train_student(store, slug, "reverse", profile, registry.spec(slug), context.log.info)
    parent = store.manifest(slug, parent_key)
    steps = weights_recipe(recipe, profile.get())
    if not prunes:
        weights = parent
    elif reusable(store, slug, recipe.weights_key, parent.fingerprint, steps):
        weights = store.manifest(slug, recipe.weights_key)
        context.log.info(f"reusing the {recipe.weights_key} weights: same parent and recipe")
    else:
        model, tokenizer = store.load(parent)
        stream = load_tokens(store.corpus_path(slug, "calibration"))
        outcome = prune(model, recipe, stream, profile.get(), log=context.log.info)
        heads = outcome.heads
        weights = store.write_weights(
            slug,
            recipe.weights_key,
            model,
            tokenizer,
            recipe=steps,
            parent_fingerprint=parent.fingerprint,
            details=outcome.details,
            extra_files=(lambda d: head_pruning.save_head_spec(d, heads)) if heads else None,
        )
    details = dict(weights.details) if prunes else {}
    if quant:
        # Quantize once now, to record what loading will do (the config and the modules
        # replaced) in the manifest; the check compares the count with the quantizable layers.
        model, _ = store.load(weights, verify=False)
        quantizable = len(quantization.quantizable_linear_names(model))
        report = quantization.quantize(model, quant["scheme"], device=compute.resolved_device())
        details["quantize"] = {
            **report.to_dict(),
            "quantizable_linear_layers": quantizable,
            "bnb_modules_found": quantization.count_quantized_modules(model),
        }
    if technique == weights.technique:
        manifest = weights
    else:
        manifest = store.write_derived(slug, technique, weights, recipe=full_recipe, load=load, details=details)
    yield dg.MaterializeResult(
        metadata={**manifest_metadata(manifest), "details": dg.MetadataValue.json(details)},
        data_version=dg.DataVersion(manifest.fingerprint[:16]),
    )
    yield from variant_checks(store, manifest, recipe, details)


def reusable(store, slug: str, key: str, parent_fingerprint: str, recipe: list[dict]) -> bool:
    """True when the store already holds these weights: same parent, same recipe."""
    if not store.exists(slug, key):
        return False
    existing = store.manifest(slug, key)
    return existing.parent_fingerprint == parent_fingerprint and existing.recipe == recipe


def variant_checks(store, manifest: Manifest, recipe, details: dict):
    heads = details.get("prune-heads")
    if heads is None:
        yield dg.AssetCheckResult(check_name="heads_really_removed", passed=True, metadata={"applies": False})
    else:
        drop = heads["parameters_before"] - heads["parameters_after"]
        yield dg.AssetCheckResult(
            check_name="heads_really_removed",
            passed=heads["heads_removed"] > 0 and drop == heads["expected_parameter_drop"],
            metadata={
                "heads_removed": heads["heads_removed"],
                "parameter_drop": drop,
                "expected_parameter_drop": heads["expected_parameter_drop"],
                "heads_per_layer_after": dg.MetadataValue.json(heads["heads_per_layer_after"]),
            },
        )
    weights = recipe.step("prune-weights")
    if weights is None or not weights["prune_n"]:
        yield dg.AssetCheckResult(check_name="exact_n_m_sparsity", passed=True, metadata={"applies": False})
    else:
        model, _ = store.load(manifest, verify=False, quantize=False)
        n, m = weights["prune_n"], weights["prune_m"]
        # A group of m with fewer than n zeros breaks the pattern sparse kernels need; a group with
        # more (weights that were already 0) does not, and is counted apart.
        by_layer = sparsegpt.n_m_violations_by_layer(model, n, m)
        extra = sum(sparsegpt.n_m_violations_by_layer(model, n, m, exact=True).values()) - sum(by_layer.values())
        layers = sparsegpt.prunable_layers(model).values()
        zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
        total = sum(layer.weight.numel() for layer in layers)
        yield dg.AssetCheckResult(
            check_name="exact_n_m_sparsity",
            passed=bool(by_layer) and sum(by_layer.values()) == 0,
            metadata={
                "violating_groups": sum(by_layer.values()),
                "groups_with_extra_zeros": extra,
                "pruned_matrices": len(by_layer),
                "sparsity": dg.MetadataValue.float(zeros / total),
            },
        )
    quantized = details.get("quantize")
    if quantized is None:
        yield dg.AssetCheckResult(check_name="modules_really_quantized", passed=True, metadata={"applies": False})
    else:
        count, expected = quantized["bnb_modules_found"], quantized["quantizable_linear_layers"]
        yield dg.AssetCheckResult(
            check_name="modules_really_quantized",
            passed=count > 0 and count == expected,
            metadata={"quantized_modules": count, "quantizable_modules": expected, "scheme": quantized["scheme"]},
        )
