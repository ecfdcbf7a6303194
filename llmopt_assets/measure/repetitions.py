"""The repetition protocol: warm-ups (not measured), then N measured runs, each timed and metered.

The paper repeats each measurement 30 times (5 for CPU pruning); the first runs of a model
pay for allocation, page faults and kernel selection, so warm-ups are run and discarded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .energy.base import EnergyMeter, EnergyReading
from .interference import Interference, InterferenceMonitor

T = TypeVar("T")


@dataclass(frozen=True)
class RepetitionProtocol:
    warmup: int
    repetitions: int
    cooldown_seconds: float = 0.0  # pause before each measured run, e.g. to let clocks settle

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repetitions < 1 or self.cooldown_seconds < 0:
            raise ValueError(f"invalid protocol {self}")


@dataclass(frozen=True)
class Repetition(Generic[T]):
    index: int  # 0-based among measured runs
    value: T  # what the workload returned (e.g. a perplexity)
    seconds: float  # wall time of exactly the workload call
    energy: EnergyReading
    interference: Interference | None = None  # other processes' load during it (None: unmonitored)


class RepetitionError(RuntimeError):
    """A repetition (or warm-up) raised; ``completed`` keeps the runs measured before it."""

    def __init__(self, message: str, completed: list[Repetition], failed_index: int):
        super().__init__(message)
        self.completed = completed
        self.failed_index = failed_index


def run_repetitions(
    workload: Callable[[], T],
    meter: EnergyMeter,
    protocol: RepetitionProtocol,
    *,
    on_repetition: Callable[[Repetition[T]], None] | None = None,
    monitor: InterferenceMonitor | None = None,
) -> list[Repetition[T]]:
    """Run ``protocol.warmup`` unmeasured calls, then ``protocol.repetitions`` measured ones.

    Each measured call: optional cooldown, meter.start(), perf_counter around exactly the
    call, meter.stop(). The meter is stopped even if the call raises; the error is re-raised
    as ``RepetitionError`` carrying the completed repetitions. A warm-up failure has
    ``failed_index = -1`` and no completed runs. Around each measured call (outside the timed
    and metered region) ``monitor`` samples the CPU time of other processes, so a repetition
    that shared the machine is flagged (a default monitor when none is given).
    """
    monitor = monitor or InterferenceMonitor()
    for _ in range(protocol.warmup):
        try:
            workload()
        except Exception as error:
            raise RepetitionError(f"warm-up failed: {error!r}", [], -1) from error
    completed: list[Repetition[T]] = []
    for index in range(protocol.repetitions):
        if protocol.cooldown_seconds:
            time.sleep(protocol.cooldown_seconds)
        monitor.start()
        meter.start()
        try:
            t0 = time.perf_counter()
            value = workload()
            seconds = time.perf_counter() - t0
        except Exception as error:
            with contextlib.suppress(Exception):  # keep the workload's error, not the meter's
                meter.stop()
            raise RepetitionError(
                f"repetition {index} of {protocol.repetitions} failed: {error!r}",
                completed,
                index,
            ) from error
        energy = meter.stop()
        repetition = Repetition(index, value, seconds, energy, monitor.stop())
        completed.append(repetition)
        if on_repetition is not None:
            on_repetition(repetition)
    return completed
