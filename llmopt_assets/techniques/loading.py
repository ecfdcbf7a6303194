"""A stored artifact as a ready model: the weights its manifest names, pruned heads rebuilt to
their stored shapes, quantized as its recipe says. The store knows files and manifests; what a
technique does to a model when it is loaded is known here, beside the techniques."""

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llmopt_assets.models.store import CorruptArtifactError, Manifest, ModelStore
from llmopt_assets.techniques import head_pruning, quantization, smoothing


def load_variant(
    store: ModelStore,
    manifest: Manifest,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    attn_implementation: str = "sdpa",
    verify: bool = True,
    quantize: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The artifact as a model in eval mode: weights checked against the manifest (verify), heads
    restored, quantized when the manifest says so (quantize=False: the stored fp32 weights)."""
    if verify:
        store.verify(manifest)
    directory = store.weights_path(manifest)
    if head_pruning.read_head_spec(directory) is not None:
        model = head_pruning.load_head_pruned(directory, dtype=dtype, attn_implementation=attn_implementation)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                directory, dtype=dtype, attn_implementation=attn_implementation
            )
        except (OSError, SafetensorError) as error:
            raise CorruptArtifactError(f"cannot load weights from {directory}: {error}") from error
    model = model.to(device).eval()
    scheme = manifest.load.get("quantization")
    if scheme and quantize:
        smoothed = manifest.load.get("smoothing")
        if smoothed:
            # SmoothQuant factors chosen when the variant was built, folded before quantizing.
            path = store.artifact_file(manifest, smoothed["file"])
            factors = smoothing.load_factors(path, smoothed["sha256"] if verify else None)
            smoothing.fold_smoothing(model, smoothing.smoothing_groups(model)[0], factors)
        quantization.quantize(
            model, scheme, compute_dtype=dtype, device=device, **quantization.recorded_options(manifest.load)
        )
    return model, AutoTokenizer.from_pretrained(directory)
