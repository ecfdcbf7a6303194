"""Build variants from their recipes: train the distilled student; prune (heads, then weights)
in memory. Quantization is recorded and applied when the variant is loaded (bitsandbytes
quantizes at load)."""

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from llmopt_assets.measure.corpus import calibration_windows, load_tokens
from llmopt_assets.models.architecture import context_length, decoder_layers
from llmopt_assets.models.registry import ModelSpec
from llmopt_assets.models.store import Manifest, ModelStore
from llmopt_assets.profiles import EvaluationProfile
from llmopt_assets.techniques import distillation, distillation_data, head_pruning, quantization, smoothing, sparsegpt
from llmopt_assets.techniques.loading import load_variant
from llmopt_assets.techniques.recipe import BASE, DISTILL, Recipe, parse

# Bump with any change to how variants and students are built here (step order, reuse, what is
# stored); each technique module versions its own algorithm.
CODE_VERSION = "1"
STEP_MODULES = {
    "distill": distillation,
    "prune-heads": head_pruning,
    "prune-weights": sparsegpt,
    "quantize": quantization,
}
CALIBRATION_SEED = 0
DISTILLATION_PRESETS = distillation.PRESETS


def variant_code_version() -> str:
    """compressed_variant's code version: this module's and every technique's, e.g.
    'build1.distill1.prune-heads1.prune-weights1.quantize1'."""
    steps = (f"{step}{module.CODE_VERSION}" for step, module in STEP_MODULES.items())
    return ".".join([f"build{CODE_VERSION}", *steps])


def student_code_version() -> str:
    """distilled_student's code version: this module's and the distillation algorithm's."""
    return f"build{CODE_VERSION}.distill{distillation.CODE_VERSION}"


def versioned(step: dict) -> dict:
    """A recipe step with the code version of the technique that runs it, for the manifest:
    weights made by another version of the code are not reused, and lineage names the version."""
    return {**step, "code_version": STEP_MODULES[step["step"]].CODE_VERSION}


def weights_recipe(recipe: Recipe, profile: EvaluationProfile) -> list[dict]:
    """The steps that make new weights, with the calibration each used: two artifacts with equal
    parent and equal weights recipe hold the same weights, so one can stand for the other."""
    calibration = {
        "prune-heads": {"samples": profile.head_calibration_samples, "length": profile.head_calibration_length},
        "prune-weights": {"samples": profile.sparsegpt_samples, "length": profile.sparsegpt_length},
    }
    steps = []
    for step in recipe.weight_steps:
        extra = calibration.get(step["step"])
        if step.get("method") == "magnitude":
            extra = None  # magnitude pruning reads no data
        if step["step"] == "prune-heads":
            step = {**step, "criterion": profile.head_criterion}
        steps.append(versioned({**step, "calibration": {**extra, "seed": CALIBRATION_SEED}} if extra else step))
    return steps


def identical_variant(recipe: Recipe, details: dict) -> str | None:
    """The variant whose weights (and load) this one holds exactly, when a step changed nothing:
    head pruning that found no head meeting its criterion removes none, so kd+ah90 is kd and
    kd+nf4+ah90 is kd+nf4. None when every step changed the weights (or the details are older
    than the head count). Its rows are then the other variant measured again, not a technique."""
    heads = details.get("prune-heads")
    if heads is None or heads.get("heads_removed") != 0 or recipe.step("prune-weights") is not None:
        return None
    return recipe.without("prune-heads")


def _with_identity(recipe: Recipe, details: dict) -> dict:
    identical = identical_variant(recipe, details)
    return {**details, "identical_to": identical} if identical else details


@dataclass
class PruningOutcome:
    details: dict = field(default_factory=dict)
    heads: dict[int, list[int]] | None = None  # removed heads, for the artifact's head spec


def prune(
    model: PreTrainedModel,
    recipe: Recipe,
    calibration_stream: torch.Tensor,
    profile: EvaluationProfile,
    log: Callable[[str], None] = print,
) -> PruningOutcome:
    """Apply the recipe's pruning steps to model in place (head pruning first, then weights)."""
    outcome = PruningOutcome()
    heads_step = recipe.step("prune-heads")
    if heads_step is not None:
        calibration = calibration_windows(
            calibration_stream,
            profile.head_calibration_samples,
            profile.head_calibration_length,
            seed=CALIBRATION_SEED,
        )
        concentration = head_pruning.head_attention_concentration(
            model, calibration, criterion=profile.head_criterion
        )
        heads = head_pruning.select_heads_to_prune(concentration, heads_step["threshold"])
        before = sum(p.numel() for p in model.parameters())
        head_pruning.remove_heads(model, heads)
        after = sum(p.numel() for p in model.parameters())
        removed = sum(len(v) for v in heads.values())
        log(
            f"head pruning ({profile.head_criterion}) > {heads_step['threshold']:.0%}: "
            f"removed {removed} heads, {before - after} parameters"
            + (f"; no head met the criterion (highest {float(concentration.max()):.3f}): the weights "
               "are unchanged" if removed == 0 else "")
        )
        outcome.heads = heads
        outcome.details["prune-heads"] = {
            "threshold": heads_step["threshold"],
            "criterion": profile.head_criterion,
            "heads_removed": removed,
            # True: no head scored above the threshold, nothing was removed (not a failure).
            "no_head_met_criterion": removed == 0,
            "highest_concentration": round(float(concentration.max()), 4),
            "heads_removed_per_layer": {str(k): v for k, v in sorted(heads.items())},
            "heads_per_layer_after": head_pruning.heads_per_layer(model),
            "parameters_before": before,
            "parameters_after": after,
            "expected_parameter_drop": head_pruning.removed_parameter_count(model.config, heads),
            "concentration_per_layer": [[round(float(x), 4) for x in row] for row in concentration],
            "calibration": {
                "samples": profile.head_calibration_samples,
                "length": profile.head_calibration_length,
                "seed": CALIBRATION_SEED,
            },
        }
    weights_step = recipe.step("prune-weights")
    if weights_step is not None:
        n, m, sparsity = weights_step["prune_n"], weights_step["prune_m"], weights_step["sparsity"]
        if weights_step["method"] == "sparsegpt":
            calibration = calibration_windows(
                calibration_stream, profile.sparsegpt_samples, profile.sparsegpt_length, seed=CALIBRATION_SEED
            )
            report = sparsegpt.sparsegpt_prune(
                model, calibration, sparsity=sparsity, prune_n=n, prune_m=m, log=log
            )
        else:
            report = sparsegpt.magnitude_prune(model, sparsity=sparsity, prune_n=n, prune_m=m)
        outcome.details["prune-weights"] = {"method": weights_step["method"], **report.to_dict()}
    return outcome


def build_student(
    teacher: PreTrainedModel,
    stream: torch.Tensor,
    profile: EvaluationProfile,
    divergence: str,
    spec: ModelSpec,
    log: Callable[[str], None] = print,
) -> tuple[PreTrainedModel, dict]:
    """The distilled student: the registry's published student when it names one (paper parity:
    gpt2 -> distilgpt2), else half the teacher's layers trained on its soft labels."""
    if spec.published_student and divergence == "forward":
        student = AutoModelForCausalLM.from_pretrained(spec.published_student, dtype=torch.float32)
        return student, {"student": "published", "published_student": spec.published_student}
    preset = DISTILLATION_PRESETS[profile.distillation]
    config = dataclasses.replace(
        preset,
        reverse_kl=divergence == "reverse",
        block_length=min(preset.block_length, context_length(teacher)),
    )
    kept = distillation.default_kept_layers(len(decoder_layers(teacher)))
    student = distillation.init_student(teacher, kept)
    blocks = distillation.pack_blocks(stream, config.block_length)
    train_blocks, validation_blocks = distillation_data.split_validation(blocks, config.validation_fraction)
    planned = config.steps * config.batch_size * config.block_length
    epochs = distillation_data.check_epochs(planned, train_blocks.numel(), config.max_epochs)

    def report(progress: distillation.DistillProgress) -> None:
        log(
            f"distil step {progress.step}/{config.steps}: loss {progress.loss:.4f} "
            f"(kl {progress.kl:.4f}, ce {progress.ce:.4f}), {progress.tokens_per_second:.0f} tok/s, "
            f"ETA {progress.eta_seconds:.0f} s"
        )

    result = distillation.distill(
        teacher, student, train_blocks, config, log=report, validation_blocks=validation_blocks
    )
    return student.eval(), {
        "student": "trained",
        "training_tokens": train_blocks.numel(),
        "validation_tokens": validation_blocks.numel(),
        "planned_epochs": epochs,
        "kept_layers": kept,
        "teacher_layers": len(decoder_layers(teacher)),
        "divergence": divergence,
        "final_loss": result.final_loss,
        **result.to_dict(),
    }


def train_student(
    store: ModelStore,
    slug: str,
    distillation_key: str,
    profile: EvaluationProfile,
    spec: ModelSpec,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> Manifest:
    """Distil the stored base model into the student of a distillation recipe ('kd': forward KL,
    'kd-rkl': reverse KL), stored as the artifact of that name."""
    if distillation_key not in DISTILL:
        raise ValueError(f"unknown distillation {distillation_key!r}; valid: {', '.join(DISTILL)}")
    divergence = DISTILL[distillation_key]["divergence"]
    teacher_manifest = store.manifest(slug, BASE)
    teacher, tokenizer = load_variant(store, teacher_manifest, device=device)
    # The distillation_corpus asset's text (teacher samples by default), not the calibration split.
    stream = load_tokens(store.corpus_path(slug, distillation_data.CORPUS))
    student, details = build_student(teacher, stream, profile, divergence, spec, log=log)
    data = {"source": profile.distillation_data, "tokens": profile.distillation_tokens}
    return store.write_weights(
        slug, distillation_key, student, tokenizer,
        recipe=[versioned({"step": "distill", "key": distillation_key, "divergence": divergence, "data": data})],
        parent_fingerprint=teacher_manifest.fingerprint,
        details=details,
    )


def _stored_weights(
    store: ModelStore, slug: str, key: str, parent: Manifest, recipe: list[dict],
    log: Callable[[str], None] = print,
) -> Manifest | None:
    """The artifact `key` if it holds exactly these weights (same parent, same recipe) and they
    are intact; a corrupt or truncated one is rebuilt, never reused."""
    state = store.state(slug, key)
    if state.manifest is None:
        if state.problem != "missing":
            log(f"rebuilding {slug}|{key}: {state.problem}")
        return None
    existing = state.manifest
    same = existing.parent_fingerprint == parent.fingerprint and existing.recipe == recipe
    return existing if same else None


def materialize_variant(
    store: ModelStore,
    slug: str,
    recipe: Recipe,
    profile: EvaluationProfile,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> tuple[Manifest, dict]:
    """The variant's artifact and what its steps did. Pruned weights are stored under the
    technique without quantization (so nf4+ah80 and int8+ah80 share the ah80 weights) and
    computed once; quantization is recorded, with the report of a trial quantization."""
    if recipe.parent_key in DISTILL and not store.exists(slug, recipe.parent_key):
        raise FileNotFoundError(
            f"{recipe.key} starts from the {recipe.parent_key!r} student of {slug!r}, which is not in "
            f"the store: materialize distilled_student[{recipe.parent_key}|{slug}] first"
        )
    parent = store.manifest(slug, recipe.parent_key)
    steps = weights_recipe(recipe, profile)
    prunes = recipe.step("prune-heads") or recipe.step("prune-weights")
    weights = parent if not prunes else _stored_weights(store, slug, recipe.weights_key, parent, steps, log)
    if weights is None:
        model, tokenizer = load_variant(store, parent)
        outcome = prune(model, recipe, load_tokens(store.corpus_path(slug, "calibration")), profile, log)
        heads = outcome.heads
        weights = store.write_weights(
            slug, recipe.weights_key, model, tokenizer,
            recipe=steps,
            parent_fingerprint=parent.fingerprint,
            details=_with_identity(parse(recipe.weights_key), outcome.details),
            extra_files=(lambda d: head_pruning.save_head_spec(d, heads)) if heads else None,
        )
    elif prunes:
        log(f"reusing the {recipe.weights_key} weights: same parent and recipe")
    details = dict(weights.details) if prunes else {}
    details.pop("identical_to", None)  # the weights' (kd+ah90: kd); kd+nf4+ah90's is kd+nf4
    details = _with_identity(recipe, details)
    quant = recipe.step("quantize")
    if quant is None:
        return weights, details
    model, _ = load_variant(store, weights, verify=False)
    smoothed = quant.get("smoothquant_alpha") is not None  # SmoothQuant calibrates on this split
    stream = load_tokens(store.corpus_path(slug, "calibration")) if smoothed else None
    outcome = quantize_step(model, quant, stream, profile, device)
    details["quantize"] = {
        **outcome.report.to_dict(),
        "smoothing": outcome.smoothing_report.to_dict() if outcome.smoothing_report else None,
        # the layers the recipe quantizes: every linear but lm_head, less the recipe's fp32_modules,
        # plus lm_head where it asks (int8-dyn's recorded options)
        "quantizable_linear_layers": outcome.report.quantizable_modules,
        "bnb_modules_found": quantization.count_quantized_modules(model),
    }
    load: dict = {"quantization": quant["scheme"], **quantization.recorded_options(quant)}
    if "fp32_modules" in load:
        load["fp32_modules"] = list(load["fp32_modules"])  # JSON
    steps = [versioned(step) for step in recipe.steps]
    extra_files = None
    if outcome.factors is not None:
        data = smoothing.factors_bytes(outcome.factors)

        def extra_files(directory: Path) -> None:
            (directory / smoothing.FACTORS_FILE).write_bytes(data)

        steps = [{**s, "calibration": outcome.calibration} if s["step"] == "quantize" else s for s in steps]
        load["smoothing"] = {"file": smoothing.FACTORS_FILE, "alpha": quant["smoothquant_alpha"],
                             "sha256": hashlib.sha256(data).hexdigest()}
    manifest = store.write_derived(
        slug, recipe.key, weights, recipe=steps, load=load, details=details, extra_files=extra_files,
    )
    return manifest, details


@dataclass
class QuantizeOutcome:
    report: quantization.QuantizationReport
    factors: dict[str, torch.Tensor] | None = None  # SmoothQuant factors folded before quantizing
    smoothing_report: smoothing.SmoothingReport | None = None
    calibration: dict | None = None  # the smoothing windows: samples, length, seed (as recorded)


def quantize_step(
    model: PreTrainedModel,
    step: dict,
    calibration_stream: torch.Tensor | None,
    profile: EvaluationProfile,
    device: str = "cpu",
) -> QuantizeOutcome:
    """Apply a recipe's quantize step to a model in memory: SmoothQuant first when the step names
    a migration strength (factors from the profile's smoothing windows of ``calibration_stream``,
    the calibration split's tokens), then the scheme with the step's recorded int8-dyn options."""
    factors = report = windows = None
    if step.get("smoothquant_alpha") is not None:
        if calibration_stream is None:
            raise ValueError(f"{step.get('key', step)}: SmoothQuant needs the calibration corpus")
        length = min(profile.smoothing_length, context_length(model))
        windows = {"samples": profile.smoothing_samples, "length": length, "seed": CALIBRATION_SEED}
        calibration = calibration_windows(calibration_stream, profile.smoothing_samples, length, seed=CALIBRATION_SEED)
        factors, report = smoothing.smooth(model, calibration, step["smoothquant_alpha"])
    quantized = quantization.quantize(model, step["scheme"], device=device, **quantization.recorded_options(step))
    return QuantizeOutcome(quantized, factors, report, windows)
