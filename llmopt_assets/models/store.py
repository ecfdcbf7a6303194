"""The model store: one directory per (model, technique) artifact, written atomically.

An artifact is either weights (safetensors from save_pretrained, plus tokenizer) or a recipe
over another artifact's weights (quantization is applied when the variant is loaded, so an
`int8` artifact points at its parent's weights). Every artifact has a manifest.json naming the
exact weights (sha256 fingerprint), its parent and the recipe that made it, so every later
result can name the weights it came from.

Writes go to a temporary directory inside the store and are renamed into place, so a crash or
an exception never leaves a half-written artifact where a reader would find it.
"""

import hashlib
import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from safetensors import SafetensorError, safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase

MANIFEST = "manifest.json"


class CorruptArtifactError(RuntimeError):
    """The weights on disk are not the ones the manifest names, or cannot be read."""


@dataclass(frozen=True)
class Manifest:
    model: str
    technique: str
    fingerprint: str  # sha256 of the weights (or of parent fingerprint + recipe, for derived)
    parent_fingerprint: str | None
    recipe: list[dict]
    parameter_count: int
    bytes_on_disk: int
    weights_dir: str  # relative to the store root
    load: dict = field(default_factory=dict)  # e.g. {"quantization": "int8"}
    details: dict = field(default_factory=dict)  # technique reports (heads removed, sparsity...)
    created_at: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def weights_fingerprint(directory: Path) -> str:
    """sha256 over the safetensors files of a directory (names and bytes, in name order)."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CorruptArtifactError(f"{directory} holds no .safetensors weights")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 23):
                digest.update(chunk)
    return digest.hexdigest()


def derived_fingerprint(parent_fingerprint: str, recipe: list[dict]) -> str:
    payload = parent_fingerprint + json.dumps(recipe, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def parameter_count(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def artifact_dir(self, model: str, technique: str) -> Path:
        return self.root / model / technique

    def corpus_path(self, model: str, corpus: str) -> Path:
        """Where a corpus tokenized with this model's tokenizer lives ('eval' or 'calibration')."""
        return self.root / model / "corpora" / f"{corpus}.safetensors"

    def exists(self, model: str, technique: str) -> bool:
        return (self.artifact_dir(model, technique) / MANIFEST).is_file()

    def manifest(self, model: str, technique: str) -> Manifest:
        path = self.artifact_dir(model, technique) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"no artifact for model {model!r}, technique {technique!r} in the store "
                f"({path.parent}): materialize it first"
            )
        return Manifest(**json.loads(path.read_text()))

    def _commit(self, model: str, technique: str, fill: Callable[[Path], Manifest]) -> Manifest:
        """Build an artifact in a temp dir, then rename it over the old one."""
        staging = self.root / ".staging" / uuid.uuid4().hex
        staging.mkdir(parents=True)
        try:
            manifest = fill(staging)
            (staging / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2))
            final = self.artifact_dir(model, technique)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                retired = self.root / ".staging" / f"retired-{uuid.uuid4().hex}"
                final.rename(retired)
                staging.rename(final)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                staging.rename(final)
            return manifest
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def write_weights(
        self,
        model_slug: str,
        technique: str,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        recipe: list[dict],
        parent_fingerprint: str | None,
        details: dict | None = None,
        extra_files: Callable[[Path], None] | None = None,
    ) -> Manifest:
        """Save a model's weights (fp32 as given) and tokenizer as an artifact."""

        def fill(staging: Path) -> Manifest:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            if extra_files is not None:
                extra_files(staging)
            return Manifest(
                model=model_slug,
                technique=technique,
                fingerprint=weights_fingerprint(staging),
                parent_fingerprint=parent_fingerprint,
                recipe=recipe,
                parameter_count=parameter_count(model),
                bytes_on_disk=sum(p.stat().st_size for p in staging.glob("*.safetensors")),
                weights_dir=str(Path(model_slug) / technique),
                details=details or {},
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )

        return self._commit(model_slug, technique, fill)

    def write_derived(
        self,
        model_slug: str,
        technique: str,
        weights_from: Manifest,
        *,
        recipe: list[dict],
        load: dict,
        details: dict | None = None,
    ) -> Manifest:
        """An artifact that reuses another artifact's weights and changes how they load."""

        def fill(staging: Path) -> Manifest:
            return Manifest(
                model=model_slug,
                technique=technique,
                fingerprint=derived_fingerprint(weights_from.fingerprint, recipe),
                parent_fingerprint=weights_from.fingerprint,
                recipe=recipe,
                parameter_count=weights_from.parameter_count,
                bytes_on_disk=0,
                weights_dir=weights_from.weights_dir,
                load=load,
                details=details or {},
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )

        return self._commit(model_slug, technique, fill)

    def verify(self, manifest: Manifest) -> None:
        """Raise CorruptArtifactError unless the weights are the ones the manifest names."""
        directory = self.weights_path(manifest)
        if not directory.is_dir():
            raise CorruptArtifactError(f"weights directory {directory} is missing")
        # A derived artifact's weights are named by the manifest of the directory holding them.
        weights_manifest = self.manifest_at(directory)
        actual = weights_fingerprint(directory)
        if actual != weights_manifest.fingerprint:
            raise CorruptArtifactError(
                f"weights in {directory} do not match their manifest (sha256 {actual[:12]}… vs "
                f"{weights_manifest.fingerprint[:12]}…): corrupt or modified; rematerialize them"
            )
        for path in directory.glob("*.safetensors"):
            try:
                with safe_open(path, framework="pt") as handle:
                    handle.keys()
            except (OSError, SafetensorError) as error:
                raise CorruptArtifactError(f"cannot read {path}: {error}") from error

    def weights_path(self, manifest: Manifest) -> Path:
        """The directory holding the artifact's weights (its parent's, for a derived artifact).
        Loading them as a model is the techniques' business (techniques.loading.load_variant)."""
        return self.root / manifest.weights_dir

    def manifest_at(self, directory: Path) -> Manifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise CorruptArtifactError(f"{directory} has no {MANIFEST}")
        return Manifest(**json.loads(path.read_text()))
