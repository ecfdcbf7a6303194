"""The model store: one artifact per (model, technique), committed in one atomic step.

An artifact is either weights (safetensors from save_pretrained, plus tokenizer) or a recipe
over another artifact's weights (quantization is applied when the variant is loaded, so an
`int8` artifact points at its parent's weights). Every artifact has a manifest.json naming the
exact weights (sha256 fingerprint), its parent and the recipe that made it, so every later
result can name the weights it came from.

Layout and commit (why a crash at any moment leaves the old or the new artifact, never none):

    <root>/<model>/<technique>                      -> symlink ".versions/<technique>/<version>"
    <root>/<model>/.versions/<technique>/<version>/  immutable: weights, tokenizer, manifest.json
    <root>/.staging/<pid>-<uuid>/                    an artifact being written
    <root>/.locks/<model>/<technique>.lock           flock: one committer per artifact

A writer fills a staging directory (no lock: two writers may build at once), then, holding the
artifact's lock, renames it to a new version directory (a fresh name: nothing to collide with)
and replaces the pointer symlink with os.replace, a single rename(2) that atomically swaps which
version the artifact names. Only then are the versions no pointer names removed. A kill before
the swap leaves the old pointer; after it, the new one; leftovers (staging of dead processes,
unreferenced versions) are removed by the next commit of that artifact and by `llmopt doctor`.
flock locks are released by the kernel when their holder dies, so a killed writer never blocks.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmopt_assets.models.keys import check_model_slug, check_technique_key, inside

MANIFEST = "manifest.json"
STAGING = ".staging"
VERSIONS = ".versions"
LOCKS = ".locks"
POINTER_SUFFIX = ".pointer"  # a pointer symlink being created (before its os.replace)
# A staging directory without a live owner that is this old is an orphan even if its name
# carries no pid (written by the store before pids were recorded).
ORPHAN_AGE_SECONDS = 600


class CorruptArtifactError(RuntimeError):
    """The weights or manifest on disk are not the ones the manifest names, or cannot be read."""


class StaleArtifactError(CorruptArtifactError):
    """A derived artifact whose parent's weights have changed since it was derived: loading it
    would measure the new weights under the old lineage."""


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

    @property
    def is_derived(self) -> bool:
        """True when the weights are another artifact's (a recipe applied at load)."""
        return self.weights_dir != f"{self.model}/{self.technique}"

    @property
    def expected_weights_fingerprint(self) -> str | None:
        """The fingerprint the weights directory's own manifest must carry."""
        return self.parent_fingerprint if self.is_derived else self.fingerprint


def read_manifest(path: Path) -> Manifest:
    """The manifest at `path`; a truncated or foreign file is a CorruptArtifactError naming it."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return Manifest(**document)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptArtifactError(
            f"{path} is not valid JSON ({error}): the artifact is corrupt; rematerialize it "
            "(or run `llmopt doctor --repair`)"
        ) from error
    except TypeError as error:
        raise CorruptArtifactError(f"{path} is not an artifact manifest ({error})") from error


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


def staging_owner(name: str) -> int | None:
    """The pid a staging directory name records ('<pid>-<uuid>'), None for older names."""
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() and "-" in name else None


def owner_alive(pid: int) -> bool:
    # A pid reused by another process would keep an orphan a little longer; never wrong.
    return psutil.pid_exists(pid)


def _fsync_tree(directory: Path) -> None:
    """Flush a staging directory's files so the rename never publishes data still in flight."""
    for path in directory.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class ArtifactState:
    """An artifact as found on disk: its manifest when usable, else why not."""

    model: str
    technique: str
    manifest: Manifest | None
    problem: str | None  # None: present and its weights verified


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def artifact_dir(self, model: str, technique: str) -> Path:
        """The artifact's pointer: reads through it see one whole version."""
        check_model_slug(model)
        check_technique_key(technique)
        return inside(self.root, self.root / model / technique)

    def versions_dir(self, model: str, technique: str) -> Path:
        return self.artifact_dir(model, technique).parent / VERSIONS / technique

    def lock_path(self, model: str, technique: str) -> Path:
        self.artifact_dir(model, technique)  # validates both keys
        return self.root / LOCKS / model / f"{technique}.lock"

    def corpus_path(self, model: str, corpus: str) -> Path:
        """Where a corpus tokenized with this model's tokenizer lives ('eval' or 'calibration')."""
        check_model_slug(model)
        check_technique_key(corpus)
        return inside(self.root, self.root / model / "corpora" / f"{corpus}.safetensors")

    def exists(self, model: str, technique: str) -> bool:
        return (self.artifact_dir(model, technique) / MANIFEST).is_file()

    def manifest(self, model: str, technique: str) -> Manifest:
        path = self.artifact_dir(model, technique) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"no artifact for model {model!r}, technique {technique!r} in the store "
                f"({path.parent}): materialize it first"
            )
        return read_manifest(path)

    def state(self, model: str, technique: str) -> ArtifactState:
        """The artifact if present and intact; a corrupt or stale one comes back with its problem
        (and no manifest), so a caller rebuilds it instead of reusing it forever."""
        try:
            manifest = self.manifest(model, technique)
        except FileNotFoundError:
            return ArtifactState(model, technique, None, "missing")
        except CorruptArtifactError as error:
            return ArtifactState(model, technique, None, str(error))
        try:
            self.verify(manifest)
        except CorruptArtifactError as error:
            return ArtifactState(model, technique, None, str(error))
        return ArtifactState(model, technique, manifest, None)

    @contextlib.contextmanager
    def lock(self, model: str, technique: str, *, blocking: bool = True) -> Iterator[bool]:
        """Hold the artifact's commit lock (yields False when not blocking and it is taken)."""
        path = self.lock_path(model, technique)
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(descriptor)
                yield False
                return
            # `llmopt doctor` may have unlinked the file between our open and our flock: then we
            # hold a lock on an inode nobody else will open. Retry on the file now at the path.
            try:
                same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(descriptor)
        try:
            os.ftruncate(descriptor, 0)
            os.write(descriptor, str(os.getpid()).encode())  # who holds it, for doctor's report
            yield True
        finally:
            os.close(descriptor)  # releases the flock

    def _commit(self, model: str, technique: str, fill: Callable[[Path], Manifest]) -> Manifest:
        """Build an artifact in a staging directory, then publish it with one pointer swap."""
        self.artifact_dir(model, technique)  # refuse a bad key before building anything
        self.remove_orphan_staging()
        staging = self.root / STAGING / f"{os.getpid()}-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            manifest = fill(staging)
            (staging / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2))
            _fsync_tree(staging)
            with self.lock(model, technique):
                versions = self.versions_dir(model, technique)
                versions.mkdir(parents=True, exist_ok=True)
                version = versions / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
                staging.rename(version)
                self._migrate_plain_directory(model, technique)
                self.repoint(model, technique, version)
            return manifest
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def repoint(self, model: str, technique: str, version: Path | None) -> None:
        """Point the artifact at `version` (None: remove the artifact), then remove the versions
        it no longer names. Call holding the artifact's lock."""
        pointer = self.artifact_dir(model, technique)
        if version is None:
            if pointer.is_symlink() or pointer.is_file():
                pointer.unlink()
            elif pointer.is_dir():
                shutil.rmtree(pointer)
        else:
            link = pointer.parent / f".{technique}.{uuid.uuid4().hex}{POINTER_SUFFIX}"
            os.symlink(os.path.relpath(version, pointer.parent), link)
            os.replace(link, pointer)  # the commit: one atomic rename
        self._remove_unreferenced(model, technique)

    def _migrate_plain_directory(self, model: str, technique: str) -> None:
        """An artifact written before versioned commits is a plain directory; move it under
        .versions so a symlink can replace it (a crash between leaves a version that doctor
        re-points: `llmopt doctor --repair`)."""
        pointer = self.artifact_dir(model, technique)
        if pointer.is_dir() and not pointer.is_symlink():
            pointer.rename(self.versions_dir(model, technique) / f"0-legacy-{uuid.uuid4().hex[:8]}")

    def current_version(self, model: str, technique: str) -> Path | None:
        pointer = self.artifact_dir(model, technique)
        if not pointer.is_symlink():
            return None
        return (pointer.parent / os.readlink(pointer)).resolve()

    def unreferenced_versions(self, model: str, technique: str) -> list[Path]:
        """Versions the pointer does not name: superseded, or committed by a killed writer."""
        versions = self.versions_dir(model, technique)
        if not versions.is_dir():
            return []
        current = self.current_version(model, technique)
        return sorted(v for v in versions.iterdir() if v.resolve() != current)

    def _remove_unreferenced(self, model: str, technique: str) -> list[Path]:
        """Call holding the artifact's lock (no commit is between its rename and its swap)."""
        removed = self.unreferenced_versions(model, technique)
        for version in removed:
            shutil.rmtree(version, ignore_errors=True)
        pointer = self.artifact_dir(model, technique)
        for link in pointer.parent.glob(f".{technique}.*{POINTER_SUFFIX}"):
            link.unlink(missing_ok=True)
            removed.append(link)
        return removed

    def orphan_staging(self) -> list[Path]:
        """Staging directories whose writer is gone (its pid dead, or unnamed and old)."""
        staging = self.root / STAGING
        if not staging.is_dir():
            return []
        orphans = []
        for entry in sorted(staging.iterdir()):
            pid = staging_owner(entry.name)
            if pid is not None:
                if not owner_alive(pid):
                    orphans.append(entry)
            elif time.time() - entry.lstat().st_mtime > ORPHAN_AGE_SECONDS:
                orphans.append(entry)
        return orphans

    def remove_orphan_staging(self) -> list[Path]:
        orphans = self.orphan_staging()
        for entry in orphans:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        return orphans

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
                weights_dir=f"{model_slug}/{technique}",
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
        extra_files: Callable[[Path], None] | None = None,
    ) -> Manifest:
        """An artifact that reuses another artifact's weights and changes how they load
        (``extra_files``: what the loading needs beside the manifest, e.g. smoothing factors)."""

        def fill(staging: Path) -> Manifest:
            if extra_files is not None:
                extra_files(staging)
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

    def artifact_file(self, manifest: Manifest, name: str) -> Path:
        """A file the artifact itself holds (not its weights): written by ``extra_files``."""
        path = inside(self.root, self.artifact_dir(manifest.model, manifest.technique) / name)
        if not path.is_file():
            raise CorruptArtifactError(
                f"{manifest.model}|{manifest.technique} names {name} but {path} is missing: rematerialize it"
            )
        return path

    def weights_path(self, manifest: Manifest) -> Path:
        """The version directory holding the artifact's weights (its parent's, for a derived one),
        resolved once so a reader never mixes two versions when a writer swaps the pointer
        meanwhile. Loading them as a model is the techniques' business (techniques.loading)."""
        pointer = inside(self.root, self.root / manifest.weights_dir)
        if not pointer.is_dir():
            raise CorruptArtifactError(f"weights directory {pointer} is missing")
        return pointer.resolve()

    def verify(self, manifest: Manifest) -> None:
        """Raise CorruptArtifactError unless the weights are the ones the manifest names:
        StaleArtifactError when a derived artifact's parent weights have been replaced."""
        directory = self.weights_path(manifest)
        # A derived artifact's weights are named by the manifest of the directory holding them.
        weights_manifest = self.manifest_at(directory)
        expected = manifest.expected_weights_fingerprint
        if weights_manifest.fingerprint != expected:
            kind = f"was derived from weights sha256 {str(expected)[:12]}…" if manifest.is_derived else (
                f"names weights sha256 {manifest.fingerprint[:12]}…"
            )
            raise StaleArtifactError(
                f"{manifest.model}|{manifest.technique} {kind} but {manifest.weights_dir} now holds "
                f"sha256 {weights_manifest.fingerprint[:12]}… (re-materialized since): its lineage "
                f"would be wrong; rematerialize {manifest.model}|{manifest.technique}"
            )
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

    def manifest_at(self, directory: Path) -> Manifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise CorruptArtifactError(f"{directory} has no {MANIFEST}")
        return read_manifest(path)
