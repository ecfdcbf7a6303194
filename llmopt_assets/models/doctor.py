"""What a crash or a bad disk leaves in the model store, found and (on request) repaired.

Findings: staging directories of dead writers, versions no pointer names (a writer killed between
its rename and its swap, or superseded), pointer temp links, dangling pointers, artifacts whose
weights do not match their manifest (truncated, modified), derived artifacts whose parent weights
were replaced, unreadable corpora, and lock files of artifacts that no longer exist. Repairs only
remove or re-point: weights are rebuilt by re-materializing, never patched.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from llmopt_assets.models.keys import InvalidKeyError, check_model_slug, check_technique_key
from llmopt_assets.models.store import (
    LOCKS,
    MANIFEST,
    POINTER_SUFFIX,
    VERSIONS,
    CorruptArtifactError,
    ModelStore,
    read_manifest,
)

CORPORA = "corpora"


@dataclass(frozen=True)
class Finding:
    kind: str
    path: Path
    detail: str
    repair: str  # what --repair does about it

    def describe(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}"


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _artifacts(store: ModelStore) -> list[tuple[str, str]]:
    """(model, technique) of every pointer or version directory in the store."""
    found = set()
    if not store.root.is_dir():
        return []
    for model_dir in sorted(store.root.iterdir()):
        if model_dir.name.startswith(".") or not model_dir.is_dir():
            continue
        names = {p.name for p in model_dir.iterdir() if not p.name.startswith(".") and p.name != CORPORA}
        if (model_dir / VERSIONS).is_dir():
            names |= {p.name for p in (model_dir / VERSIONS).iterdir()}
        for technique in names:
            try:
                found.add((check_model_slug(model_dir.name), check_technique_key(technique)))
            except InvalidKeyError:
                continue  # not written by the store
    return sorted(found)


def _newest_readable_version(store: ModelStore, model: str, technique: str) -> Path | None:
    versions = store.versions_dir(model, technique)
    candidates = sorted(versions.iterdir(), reverse=True) if versions.is_dir() else []
    for version in candidates:
        try:
            read_manifest(version / MANIFEST)
            return version
        except (CorruptArtifactError, FileNotFoundError):
            continue
    return None


def inspect_store(store: ModelStore) -> list[Finding]:
    findings = [
        Finding("orphan-staging", path, "staging directory of a writer that is gone", "remove it")
        for path in store.orphan_staging()
    ]
    for model, technique in _artifacts(store):
        pointer = store.artifact_dir(model, technique)
        for link in pointer.parent.glob(f".{technique}.*{POINTER_SUFFIX}"):
            findings.append(Finding("pointer-temp", link, "pointer link of a commit that was killed", "remove it"))
        readable = None if pointer.exists() else _newest_readable_version(store, model, technique)
        if pointer.is_symlink() and not pointer.exists():
            findings.append(Finding("dangling-pointer", pointer, "names a version that does not exist",
                                    "point it at the newest readable version, else remove it"))
        elif readable is not None:
            findings.append(Finding("dangling-pointer", pointer, "no pointer, but versions exist (killed migration)",
                                    "point it at the newest readable version"))
        if readable is None and (pointer.is_symlink() or not pointer.exists()):
            # (With a readable version and no pointer, re-pointing removes the others.)
            for version in store.unreferenced_versions(model, technique):
                findings.append(Finding("orphan-version", version, "version no pointer names", "remove it"))
        if pointer.exists():
            state = store.state(model, technique)
            if state.problem is not None:
                kind = "stale-derived" if "derived from" in state.problem else "corrupt-artifact"
                findings.append(Finding(kind, pointer, state.problem,
                                        f"remove it: re-materialize {model}|{technique} to rebuild it"))
    for corpus in sorted(store.root.glob(f"*/{CORPORA}/*")):
        if corpus.suffix == ".tmp":
            findings.append(Finding("orphan-staging", corpus, "corpus file of a write that was killed", "remove it"))
            continue
        try:
            with safe_open(corpus, framework="pt") as handle:
                handle.keys()
        except (OSError, SafetensorError) as error:
            findings.append(Finding("corrupt-corpus", corpus, f"unreadable: {error}",
                                    "remove it: re-materialize the corpus asset"))
    findings += _stale_locks(store)
    return findings


def _stale_locks(store: ModelStore) -> list[Finding]:
    """Lock files of artifacts that no longer exist. (A lock is never stale while held: flock is
    released by the kernel when its holder dies, so a held lock has a live holder.)"""
    stale = []
    for lock in sorted((store.root / LOCKS).glob("*/*.lock")):
        model, technique = lock.parent.name, lock.name.removesuffix(".lock")
        try:
            pointer = store.artifact_dir(model, technique)
        except InvalidKeyError:
            stale.append(Finding("stale-lock", lock, "lock file of no valid artifact key", "remove it"))
            continue
        if not pointer.exists() and not store.versions_dir(model, technique).exists():
            stale.append(Finding("stale-lock", lock, "lock file of an artifact that no longer exists", "remove it"))
    return stale


def repair_store(store: ModelStore, findings: list[Finding]) -> list[Finding]:
    """Carry out each finding's repair; those skipped (an artifact being committed right now)
    are left out of the result."""
    repaired = []
    for finding in findings:
        if finding.kind in ("orphan-staging", "corrupt-corpus"):
            _remove(finding.path)
            repaired.append(finding)
            continue
        if finding.kind == "stale-lock":
            model, technique = finding.path.parent.name, finding.path.name.removesuffix(".lock")
            try:
                with store.lock(model, technique, blocking=False) as held:
                    if held:
                        finding.path.unlink(missing_ok=True)  # lock() re-checks the inode after this
                        repaired.append(finding)
            except InvalidKeyError:
                finding.path.unlink(missing_ok=True)
                repaired.append(finding)
            continue
        model, technique = _artifact_of(store, finding.path)
        with store.lock(model, technique, blocking=False) as held:
            if not held:
                continue  # a commit is under way: it cleans up after itself
            if finding.kind in ("orphan-version", "pointer-temp"):
                _remove(finding.path)
            elif finding.kind == "dangling-pointer":
                store.repoint(model, technique, _newest_readable_version(store, model, technique))
            else:  # corrupt-artifact, stale-derived: unusable; removing it makes the next run rebuild
                store.repoint(model, technique, None)
            repaired.append(finding)
    return repaired


def _artifact_of(store: ModelStore, path: Path) -> tuple[str, str]:
    relative = path.relative_to(store.root).parts
    model = relative[0]
    if relative[1] == VERSIONS:
        return model, relative[2]
    name = relative[1]
    if name.endswith(POINTER_SUFFIX):  # ".<technique>.<uuid>.pointer"
        name = name[1:].removesuffix(POINTER_SUFFIX).rsplit(".", 1)[0]
    return model, name

