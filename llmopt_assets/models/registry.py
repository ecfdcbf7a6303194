"""The model registry: models.yaml lists the models by slug and says where each comes from."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from llmopt_assets.paths import DEFAULT_REGISTRY

SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
SourceKind = Literal["hub", "local", "embedded"]


@dataclass(frozen=True)
class ModelSpec:
    slug: str
    source: SourceKind
    location: str  # hub id, local directory, or embedded package name
    published_student: str | None = None  # e.g. gpt2 -> distilgpt2, for the paper's KD rows
    notes: str = ""


def slugify(name: str) -> str:
    """A path- and partition-safe key for a hub id or directory name: 'facebook/opt-125m' ->
    'facebook--opt-125m'."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.strip().lower().replace("/", "--")).strip("-.")
    if not SLUG.match(slug):
        raise ValueError(f"cannot make a model slug from {name!r}")
    return slug


def parse_registry(document: dict) -> dict[str, ModelSpec]:
    entries = (document or {}).get("models")
    if not isinstance(entries, dict) or not entries:
        raise ValueError("the model registry must have a non-empty 'models:' mapping")
    specs = {}
    for slug, entry in entries.items():
        if not SLUG.match(str(slug)):
            raise ValueError(
                f"model slug {slug!r} is not a valid key (lowercase letters, digits, '.', '_', "
                "'-'); for a hub id use e.g. 'facebook--opt-125m'"
            )
        source = entry.get("source")
        if source not in ("hub", "local", "embedded"):
            raise ValueError(f"model {slug!r}: source must be hub, local or embedded, got {source!r}")
        location = entry.get("id") or entry.get("path") or entry.get("package")
        if not location:
            raise ValueError(f"model {slug!r}: give 'id' (hub), 'path' (local) or 'package' (embedded)")
        specs[slug] = ModelSpec(
            slug=slug,
            source=source,
            location=str(location),
            published_student=entry.get("published_student"),
            notes=entry.get("notes", ""),
        )
    return specs


def load_registry(path: Path = DEFAULT_REGISTRY) -> dict[str, ModelSpec]:
    if not path.is_file():
        raise FileNotFoundError(f"model registry {path} does not exist")
    return parse_registry(yaml.safe_load(path.read_text()))


def resolve(slug: str, registry: dict[str, ModelSpec]) -> ModelSpec:
    if slug not in registry:
        raise KeyError(f"unknown model {slug!r}; the registry has: {', '.join(sorted(registry))}")
    return registry[slug]
