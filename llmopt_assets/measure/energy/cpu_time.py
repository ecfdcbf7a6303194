"""An energy estimate from the CPU time this process used: CPU-seconds × watts per busy core.

This is a model, not a measurement (method "estimate"): it ignores idle/uncore power, RAM,
frequency and vector-unit load, and it sees only this process (all its threads, user+system)
plus children it has already reaped. It is useful where nothing can be measured, because it
scales with the work done rather than with a fixed TDP guess times wall time.
"""

from __future__ import annotations

import os
import resource
import time

from .base import ComponentEnergy, EnergyMeter, EnergyReading

# 150 W TDP / 20 cores: an Intel Xeon Gold 6148/6248 server core at full load, the
# TDP-per-core model of Green Algorithms (Lannelongue et al., 2021). Override for your CPU.
DEFAULT_WATTS_PER_CORE = 7.5


def process_cpu_seconds(include_children: bool = True) -> float:
    """User + system CPU seconds of this process (all threads), plus reaped children."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    seconds = usage.ru_utime + usage.ru_stime
    if include_children:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds += children.ru_utime + children.ru_stime
    return seconds


class CpuTimeMeter(EnergyMeter):
    name = "cpu-time"

    def __init__(self, watts_per_core: float = DEFAULT_WATTS_PER_CORE, include_children: bool = True):
        if watts_per_core <= 0:
            raise ValueError("watts_per_core must be positive")
        self.watts_per_core = watts_per_core
        self.include_children = include_children
        self._cpu0 = 0.0
        self._t0 = 0.0

    def probe(self) -> str:
        return (
            f"cpu-time: always available: estimates CPU energy as this process's CPU seconds "
            f"× {self.watts_per_core} W per busy core (a model, not a measurement; "
            f"{os.cpu_count()} logical CPUs here)."
        )

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._cpu0 = process_cpu_seconds(self.include_children)

    def stop(self) -> EnergyReading:
        cpu_seconds = process_cpu_seconds(self.include_children) - self._cpu0
        seconds = time.perf_counter() - self._t0
        component = ComponentEnergy(
            "cpu",
            cpu_seconds * self.watts_per_core,
            "estimate",
            "cpu-time",
            f"{cpu_seconds:.3f} CPU-s × {self.watts_per_core} W/core",
        )
        raw = {"cpu_seconds": cpu_seconds, "watts_per_core": self.watts_per_core}
        return EnergyReading(self.name, seconds, (component,), raw=raw)
