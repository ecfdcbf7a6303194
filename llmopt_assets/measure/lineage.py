"""Lineage of a result: from a (model, technique) row back to the weights that produced it (each
artifact's fingerprint, recipe, calibration and code version, parent by parent down to the
base), the evaluation text it was measured on (the token file's text hash) and the runs that
measured it. Reads only the store's manifests and the measurement rows it is given."""

import json
from dataclasses import dataclass, field
from pathlib import Path

from llmopt_assets.measure.versions import corpus_sha256
from llmopt_assets.models.store import MANIFEST, Manifest, ModelStore


@dataclass(frozen=True)
class WeightsStep:
    """One artifact of the chain, the variant first."""

    technique: str
    fingerprint: str
    parent_fingerprint: str | None
    recipe: list[dict]
    load: dict
    created_at: str

    @property
    def calibration(self) -> list[dict]:
        return [{"step": s["step"], **s["calibration"]} for s in self.recipe if "calibration" in s]

    @property
    def code_versions(self) -> dict[str, str]:
        return {s["step"]: s["code_version"] for s in self.recipe if "code_version" in s}


@dataclass(frozen=True)
class MeasurementSource:
    """Who measured: one run of one measuring asset, and what it read."""

    kind: str  # "perplexity" or "comparison"
    run_id: str
    code_version: str | None
    fingerprint: str  # the weights it measured
    corpus_sha256: str | None
    measured_at: str | None
    rows: int


@dataclass
class Lineage:
    model: str
    technique: str
    chain: list[WeightsStep]
    missing_parent: str | None  # a parent fingerprint no artifact in the store holds any more
    corpus_path: Path
    corpus_sha256: str | None  # of the token file in the store now
    measurements: list[MeasurementSource] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """Where the result no longer matches what is in the store."""
        notes = []
        if self.missing_parent:
            notes.append(f"parent weights {self.missing_parent[:12]} are no longer in the store (rebuilt since)")
        for source in self.measurements:
            if source.fingerprint != self.chain[0].fingerprint:
                notes.append(
                    f"{source.kind} run {source.run_id} measured weights {source.fingerprint[:12]}, "
                    f"the store now holds {self.chain[0].fingerprint[:12]}: re-measure"
                )
            if source.corpus_sha256 and self.corpus_sha256 and source.corpus_sha256 != self.corpus_sha256:
                notes.append(f"{source.kind} run {source.run_id} read another evaluation text than the store holds")
        return notes


def _manifests_by_fingerprint(store: ModelStore, model: str) -> dict[str, Manifest]:
    found = {}
    for path in sorted((store.root / model).glob(f"*/{MANIFEST}")):
        manifest = Manifest(**json.loads(path.read_text()))
        found.setdefault(manifest.fingerprint, manifest)
    return found


def _step(manifest: Manifest) -> WeightsStep:
    return WeightsStep(
        manifest.technique, manifest.fingerprint, manifest.parent_fingerprint, manifest.recipe, manifest.load,
        manifest.created_at,
    )


def _sources(rows: list[dict]) -> list[MeasurementSource]:
    """One source per (kind, run) among the result's rows."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        kind = "comparison" if row.get("arm") is not None else "perplexity"
        grouped.setdefault((kind, str(row.get("run_id"))), []).append(row)
    return [
        MeasurementSource(
            kind=kind,
            run_id=run_id,
            code_version=group[0].get("code_version"),
            fingerprint=str(group[0].get("variant_fingerprint") or group[0].get("fingerprint")),
            corpus_sha256=group[0].get("corpus_sha256"),
            measured_at=group[0].get("measured_at"),
            rows=len(group),
        )
        for (kind, run_id), group in sorted(grouped.items())
    ]


def trace(store: ModelStore, model: str, technique: str, rows: list[dict] | None = None) -> Lineage:
    """The lineage of a result: the artifact's manifest, its parents by fingerprint down to the
    artifact with none (the base), the evaluation corpus in the store, and the runs among `rows`
    (measurement rows of this model and technique) that measured it."""
    manifest = store.manifest(model, technique)
    known = _manifests_by_fingerprint(store, model)
    chain, missing = [_step(manifest)], None
    parent = manifest.parent_fingerprint
    while parent is not None:
        if parent not in known:
            missing = parent
            break
        chain.append(_step(known[parent]))
        parent = known[parent].parent_fingerprint
    corpus = store.corpus_path(model, "eval")
    mine = [r for r in rows or [] if r.get("model") == model and r.get("technique") == technique]
    text_sha256 = corpus_sha256(corpus) if corpus.is_file() else None
    return Lineage(model, technique, chain, missing, corpus, text_sha256, _sources(mine))


def describe(lineage: Lineage) -> str:
    """The lineage as text, for the CLI and for asset metadata."""
    lines = [f"{lineage.model} | {lineage.technique}", "", "weights (the variant first, then each parent):"]
    for depth, step in enumerate(lineage.chain):
        indent = "  " * (depth + 1)
        lines.append(f"{indent}{step.technique}: sha256 {step.fingerprint}  (created {step.created_at or '?'})")
        recipe = [{k: v for k, v in s.items() if k not in ("calibration", "code_version")} for s in step.recipe]
        lines.append(f"{indent}  recipe: {json.dumps(recipe)}")
        if step.load:
            lines.append(f"{indent}  applied at load: {json.dumps(step.load)}")
        if step.calibration:
            lines.append(f"{indent}  calibration: {json.dumps(step.calibration)}")
        if step.code_versions:
            lines.append(f"{indent}  code versions: {json.dumps(step.code_versions)}")
    if lineage.missing_parent:
        lines.append(f"  parent {lineage.missing_parent}: not in the store any more")
    lines += ["", f"evaluation text: {lineage.corpus_path}", f"  text sha256 {lineage.corpus_sha256 or 'unrecorded'}"]
    lines += ["", "measured by:"]
    if not lineage.measurements:
        lines.append("  no measurement rows for this result")
    for source in lineage.measurements:
        lines.append(
            f"  {source.kind}: run {source.run_id}, code version {source.code_version or 'unrecorded'}, "
            f"{source.rows} rows, measured {source.measured_at or '?'}"
        )
        lines.append(f"    weights {source.fingerprint}, text sha256 {source.corpus_sha256 or 'unrecorded'}")
    if lineage.warnings:
        lines += ["", "warnings:", *(f"  {note}" for note in lineage.warnings)]
    return "\n".join(lines)
