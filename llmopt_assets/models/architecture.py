"""Where the parts of a causal LM live, per family (GPT-2, OPT, Llama and look-alikes)."""

import inspect

from torch import nn
from transformers import PreTrainedModel


def model_family(model: PreTrainedModel) -> str:
    """'gpt2', 'opt' or 'llama' (Llama-shaped decoders: Llama, Mistral, Qwen2, SmolLM...)."""
    model_type = model.config.model_type
    if model_type == "gpt2":
        return "gpt2"
    if model_type == "opt":
        return "opt"
    if model_type in {"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"}:
        return "llama"
    raise ValueError(
        f"unsupported architecture {model_type!r}: supported families are GPT-2, OPT and "
        "Llama-shaped decoders (llama, mistral, qwen2, qwen3, gemma, phi3)"
    )


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The transformer blocks, in order."""
    family = model_family(model)
    if family == "gpt2":
        return model.transformer.h
    if family == "opt":
        return model.model.decoder.layers
    return model.model.layers


def set_decoder_layers(model: PreTrainedModel, layers: nn.ModuleList) -> None:
    """Replace the blocks and keep the config's layer count in step."""
    family = model_family(model)
    if family == "gpt2":
        model.transformer.h = layers
    elif family == "opt":
        model.model.decoder.layers = layers
    else:
        model.model.layers = layers
    model.config.num_hidden_layers = len(layers)
    if family == "gpt2":
        model.config.n_layer = len(layers)


def context_length(model: PreTrainedModel) -> int:
    config = model.config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot tell the context length of {config.model_type!r}")


def cache_argument(model: PreTrainedModel) -> str:
    """The forward keyword (and output field) of the KV cache: transformers >= 5.2x names it
    `cache` (`past_key_values` is deprecated there and goes in 5.40); earlier 5.x releases only
    know `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
