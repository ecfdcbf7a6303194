"""What an energy reading is, and the interface every meter implements.

A reading keeps one entry per measured component (GPU, CPU package, RAM, ...), each labelled
with *how* its joules were obtained. Nothing that could not be measured becomes 0: it is kept
with ``joules=None`` and method ``"unavailable"``, and a reading where nothing was measured
has ``joules is None``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

Method = Literal["counter", "sampled-power", "estimate", "unavailable"]

# Most direct first: a hardware energy counter, then integrated power samples, then a model.
METHOD_RANK: dict[str, int] = {"counter": 0, "sampled-power": 1, "estimate": 2}


def weakest_method(methods: list[str]) -> Method:
    """The least direct of the given (available) methods; "unavailable" if there are none."""
    ranked = [m for m in methods if m in METHOD_RANK]
    if not ranked:
        return "unavailable"
    return max(ranked, key=METHOD_RANK.__getitem__)  # type: ignore[return-value]


@dataclass(frozen=True)
class ComponentEnergy:
    """Energy of one component over one measurement, before any PUE."""

    component: str  # "gpu" | "cpu" | "ram" | "package" | ...
    joules: float | None
    method: Method
    source: str  # which counter / tool / model produced it, e.g. "nvml:0 NVIDIA H100"
    note: str = ""

    def __post_init__(self) -> None:
        if self.method == "unavailable" and self.joules is not None:
            raise ValueError(f"{self.source}: an unavailable component cannot carry joules")
        if self.method != "unavailable" and self.joules is None:
            raise ValueError(f"{self.source}: method {self.method!r} needs joules")
        if self.joules is not None and not math.isfinite(self.joules):
            raise ValueError(f"{self.source}: joules must be finite, got {self.joules}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "joules": self.joules,
            "method": self.method,
            "source": self.source,
            "note": self.note,
        }


def unavailable(component: str, source: str, why: str) -> ComponentEnergy:
    """A component that could not be measured, with the reason (never a zero)."""
    return ComponentEnergy(component, None, "unavailable", source, why)


@dataclass(frozen=True)
class EnergyReading:
    """One measurement by one meter: wall seconds, components, and the PUE we applied.

    ``pue`` is the data-centre overhead factor *we* multiply in (1.0 by default: the energy
    of the machine itself). Tools that apply their own PUE (carbontracker: 1.58) have it
    removed before their components are stored; their original figure stays in ``raw``.
    """

    meter: str
    seconds: float
    components: tuple[ComponentEnergy, ...]
    pue: float = 1.0
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def contributing(self) -> tuple[ComponentEnergy, ...]:
        return tuple(c for c in self.components if c.joules is not None)

    @property
    def joules(self) -> float | None:
        """Sum of measured/estimated components × pue; None when nothing was measured."""
        parts = self.contributing
        if not parts:
            return None
        return sum(c.joules for c in parts if c.joules is not None) * self.pue

    @property
    def method(self) -> Method:
        """The weakest method among contributing components (a sum is as good as its worst part)."""
        return weakest_method([c.method for c in self.contributing])

    @property
    def is_estimate(self) -> bool:
        return self.method == "estimate"

    @property
    def average_watts(self) -> float | None:
        joules = self.joules
        if joules is None or self.seconds <= 0:
            return None
        return joules / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "meter": self.meter,
            "seconds": self.seconds,
            "joules": self.joules,
            "method": self.method,
            "is_estimate": self.is_estimate,
            "average_watts": self.average_watts,
            "pue": self.pue,
            "components": [c.to_dict() for c in self.components],
            "raw": _jsonable(self.raw),
        }


def _jsonable(value: Any) -> Any:
    """Make tool output (numpy scalars, tuples, objects) safe for json.dumps."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return _jsonable(value.item())
    return str(value)


class Measurement:
    """Filled in by ``EnergyMeter.measure()`` when its block ends."""

    reading: EnergyReading | None = None


class EnergyMeter(abc.ABC):
    """Measures the energy of whatever runs between ``start()`` and ``stop()``.

    A meter is not re-entrant: one measurement at a time. ``close()`` releases background
    resources (threads, NVML handles) kept between measurements to keep start/stop cheap.
    """

    name: str

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> EnergyReading: ...

    @abc.abstractmethod
    def probe(self) -> str:
        """A sentence: what this meter can measure on this machine, and why."""

    def close(self) -> None:
        """Release resources; the default meter holds none."""

    @contextmanager
    def measure(self) -> Iterator[Measurement]:
        """``with meter.measure() as m: work()`` then ``m.reading``; stops even if work raises."""
        box = Measurement()
        self.start()
        try:
            yield box
        finally:
            box.reading = self.stop()
