"""What a measurement depends on, named in one data version: the weights, the evaluation text,
the protocol, the profile (with its overrides), the device and dtype, the hardware. Dagster
marks a result stale when the data version of what it read changes; this is the version a
measurement hands on to the tables and scores downstream."""

import hashlib
import json
from pathlib import Path

from safetensors import safe_open


def corpus_sha256(tokens_path: Path) -> str | None:
    """sha256 of the text a token file was made from (recorded when it was tokenized); None
    for a file written before the hash was recorded."""
    with safe_open(str(tokens_path), framework="pt") as handle:
        return (handle.metadata() or {}).get("text_sha256")


def measurement_data_version(
    *,
    fingerprint: str,
    corpus_sha256: str | None,
    protocol: dict,
    profile: dict,
    device: str,
    hardware: str,
) -> str:
    """A 16-hex-digit version that changes when anything a measurement's numbers depend on does:
    the variant's weights (fingerprint), the evaluation text, the perplexity protocol (window,
    dtype, token budget), every profile field (repetitions, cool-down... overrides included),
    the device and the hardware fingerprint."""
    payload = {
        "fingerprint": fingerprint,
        "corpus_sha256": corpus_sha256,
        "protocol": protocol,
        "profile": profile,
        "device": device,
        "hardware": hardware,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
