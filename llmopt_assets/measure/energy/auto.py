"""Choosing a meter: by name (``make_meter``) or the most direct one available (``AutoMeter``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .base import EnergyMeter, EnergyReading, unavailable
from .carbontracker_meter import CarbonTrackerMeter
from .codecarbon_meter import CodeCarbonMeter
from .cpu_time import DEFAULT_WATTS_PER_CORE, CpuTimeMeter
from .nvml import NvmlMeter
from .rapl import DEFAULT_POWERCAP_ROOT, RaplMeter


class CompositeMeter(EnergyMeter):
    """Several meters over the same span, one for each component; components are concatenated."""

    def __init__(self, meters: Sequence[EnergyMeter], name: str = "composite"):
        if not meters:
            raise ValueError("a composite meter needs at least one meter")
        self.meters = list(meters)
        self.name = name
        self._t0 = 0.0

    def probe(self) -> str:
        return " ".join(m.probe() for m in self.meters)

    def start(self) -> None:
        for meter in self.meters:
            meter.start()
        self._t0 = time.perf_counter()

    def _readings(self) -> list[EnergyReading]:
        return [meter.stop() for meter in reversed(self.meters)][::-1]

    def stop(self) -> EnergyReading:
        seconds = time.perf_counter() - self._t0
        readings = self._readings()
        components = tuple(c for r in readings for c in r.components)
        raw = {r.meter: r.raw for r in readings}
        return EnergyReading(self.name, seconds, components, 1.0, raw)

    def close(self) -> None:
        for meter in self.meters:
            meter.close()


class AutoMeter(CompositeMeter):
    """The most direct source per component: counter > sampled power > estimate.

    GPU: NVML (energy counter on Volta+, else sampled power). CPU: RAPL package+dram
    counters when readable. When neither exists, the CPU-time estimate. When a GPU or RAPL is
    measured but the CPU is not (no RAPL), the CPU is reported "unavailable" rather than
    mixing an estimate into measured joules, unless ``estimate_cpu_alongside_measured``.
    ``choice`` (and ``raw["auto"]`` in every reading) says what was chosen and why.
    """

    def __init__(
        self,
        *,
        gpu_indices: Sequence[int] | None = None,
        powercap_root: str | Path = DEFAULT_POWERCAP_ROOT,
        watts_per_core: float = DEFAULT_WATTS_PER_CORE,
        estimate_cpu_alongside_measured: bool = False,
        nvml: Any = None,
    ):
        nvml_meter = NvmlMeter(gpu_indices, nvml=nvml)
        rapl_meter = RaplMeter(powercap_root)
        reasons = [nvml_meter.probe(), rapl_meter.probe()]
        meters: list[EnergyMeter] = []
        if nvml_meter.available:
            meters.append(nvml_meter)
        rapl_ok = not reasons[1].startswith("rapl: unavailable")
        if rapl_ok:
            meters.append(rapl_meter)
        self._unmeasured_cpu: str | None = None
        if not meters or (not rapl_ok and estimate_cpu_alongside_measured):
            cpu_meter = CpuTimeMeter(watts_per_core)
            meters.append(cpu_meter)
            reasons.append(cpu_meter.probe())
        elif not rapl_ok:
            self._unmeasured_cpu = reasons[1]
            reasons.append("CPU energy is not measured (no RAPL); no estimate is mixed in.")
        if not nvml_meter.available:
            nvml_meter.close()
        super().__init__(meters, name="auto")
        self.choice = {
            "meters": [m.name for m in meters],
            "why": " ".join(reasons),
        }

    def probe(self) -> str:
        return f"auto: chose {' + '.join(self.choice['meters'])}. {self.choice['why']}"

    def stop(self) -> EnergyReading:
        reading = super().stop()
        components = reading.components
        if self._unmeasured_cpu is not None:
            components += (unavailable("cpu", "rapl", self._unmeasured_cpu),)
        raw = dict(reading.raw, auto=self.choice)
        return EnergyReading("auto", reading.seconds, components, reading.pue, raw)


METERS: dict[str, Callable[..., EnergyMeter]] = {
    "auto": AutoMeter,
    "nvml": NvmlMeter,
    "rapl": RaplMeter,
    "carbontracker": CarbonTrackerMeter,
    "codecarbon": CodeCarbonMeter,
    "cpu-time": CpuTimeMeter,
}


def make_meter(name: str, **options: Any) -> EnergyMeter:
    """A meter by name ("auto", "nvml", "rapl", "carbontracker", "codecarbon", "cpu-time")."""
    try:
        factory = METERS[name]
    except KeyError:
        raise ValueError(f"unknown energy meter {name!r}; choose one of {sorted(METERS)}") from None
    return factory(**options)
