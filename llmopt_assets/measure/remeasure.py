"""When a measurement must be made again: the weights it measured, the code that measured it or
the machine it ran on are no longer the ones in place. Pure logic; the Dagster sensor reads the
recorded and the current basis from the instance and asks for the runs."""

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class MeasurementBasis:
    """What a measurement was (or would now be) made from; None = not recorded."""

    fingerprints: str | None  # the weights measured (base+variant for a paired comparison)
    code_version: str | None  # the measuring asset's code version
    hardware: str | None  # measure.hardware.hardware_fingerprint()

    def key(self) -> str:
        """A short stable hash: the run key of a re-measurement on this basis (asked once)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def remeasure_reasons(measured: MeasurementBasis, current: MeasurementBasis) -> list[str]:
    """Why a measurement made on `measured` no longer describes `current`; empty: it still does."""
    reasons = []
    if measured.fingerprints != current.fingerprints:
        reasons.append(f"weights changed ({_short(measured.fingerprints)} -> {_short(current.fingerprints)})")
    if measured.code_version != current.code_version:
        reasons.append(f"code version changed ({measured.code_version} -> {current.code_version})")
    if measured.hardware != current.hardware:
        reasons.append(f"hardware changed ({measured.hardware} -> {current.hardware})")
    return reasons


def _short(fingerprints: str | None) -> str:
    if fingerprints is None:
        return "unrecorded"
    return "+".join(part[:12] for part in fingerprints.split("+"))
