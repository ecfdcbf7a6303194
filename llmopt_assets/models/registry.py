"""The model registry: models.yaml lists the models by slug and says where each comes from."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from llmopt_assets.models.keys import MODEL_SLUG
from llmopt_assets.paths import DEFAULT_REGISTRY

SourceKind = Literal["hub", "local", "embedded"]


@dataclass(frozen=True)
class ModelSpec:
    slug: str
    source: SourceKind
    location: str  # hub id, local directory, or embedded package name
    published_student: str | None = None  # e.g. gpt2 -> distilgpt2, for the paper's KD rows
    notes: str = ""


@dataclass(frozen=True)
class RegistryReading:
    """The registry's usable entries, and what is wrong with the others (one bad entry must not
    hide every good model)."""

    specs: dict[str, ModelSpec]
    problems: dict[str, str]  # entry key -> what is wrong with it


def slugify(name: str) -> str:
    """A path- and partition-safe key for a hub id or directory name: 'facebook/opt-125m' ->
    'facebook--opt-125m'."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.strip().lower().replace("/", "--"))
    slug = re.sub(r"_+", "_", slug).strip("-._")
    if not MODEL_SLUG.fullmatch(slug):
        raise ValueError(f"cannot make a model slug from {name!r}")
    return slug


def parse_entry(slug: object, entry: object) -> ModelSpec:
    """One registry entry, or a ValueError saying what is wrong with it."""
    if not isinstance(slug, str) or not MODEL_SLUG.fullmatch(slug):
        raise ValueError(
            f"model slug {slug!r} is not a valid key (lowercase letters, digits, '.', '-', single "
            "'_'); for a hub id use e.g. 'facebook--opt-125m'"
        )
    if not isinstance(entry, dict):
        raise ValueError(
            f"model {slug!r}: expected a mapping with 'source' and 'id'/'path'/'package', got {entry!r} "
            f"(e.g. {slug}: {{source: local, path: /models/{slug}}})"
        )
    source = entry.get("source")
    if source not in ("hub", "local", "embedded"):
        raise ValueError(f"model {slug!r}: source must be hub, local or embedded, got {source!r}")
    location = entry.get("id") or entry.get("path") or entry.get("package")
    if not location:
        raise ValueError(f"model {slug!r}: give 'id' (hub), 'path' (local) or 'package' (embedded)")
    return ModelSpec(
        slug=slug,
        source=source,
        location=str(location),
        published_student=entry.get("published_student"),
        notes=entry.get("notes", ""),
    )


def read_registry_document(document: object) -> RegistryReading:
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ValueError("the model registry must have a non-empty 'models:' mapping")
    specs, problems = {}, {}
    for slug, entry in entries.items():
        try:
            specs[slug] = parse_entry(slug, entry)
        except ValueError as error:
            problems[str(slug)] = str(error)
    return RegistryReading(specs, problems)


def parse_registry(document: dict) -> dict[str, ModelSpec]:
    """Every entry, or a ValueError naming the first bad one."""
    reading = read_registry_document(document)
    if reading.problems:
        raise ValueError(next(iter(reading.problems.values())))
    return reading.specs


def read_registry(path: Path = DEFAULT_REGISTRY) -> RegistryReading:
    """The good entries and the problems of the bad ones; an unreadable file is an error that
    names it."""
    if not path.is_file():
        raise FileNotFoundError(f"model registry {path} does not exist")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"model registry {path} is not valid YAML: {error}") from error
    try:
        return read_registry_document(document)
    except ValueError as error:
        raise ValueError(f"model registry {path}: {error}") from error


def load_registry(path: Path = DEFAULT_REGISTRY) -> dict[str, ModelSpec]:
    """Every model of the registry; a bad entry is an error naming the file and the entry."""
    reading = read_registry(path)
    if reading.problems:
        raise ValueError(f"model registry {path}: " + "; ".join(reading.problems.values()))
    return reading.specs


def resolve(slug: str, registry: dict[str, ModelSpec]) -> ModelSpec:
    if slug not in registry:
        raise KeyError(f"unknown model {slug!r}; the registry has: {', '.join(sorted(registry))}")
    return registry[slug]
