"""Other work on the machine during a measured repetition: detected and flagged, never silent.

Two runs at once skew each other's time and energy (issue 14: Tc 0.18-0.20 for dense variants).
Around each repetition we read the machine's busy CPU time (all processes, /proc/stat via
psutil.cpu_times) and our own process's CPU time (its threads and waited-for children); the
difference over the repetition's wall time is how many cores *other* processes kept busy. Using
the system-wide counters (not a scan of processes) also counts processes that started and ended
inside the repetition. Inside a container the counters are the host's: load from neighbours on
the host is interference too.
"""

import os
import time
from dataclasses import asdict, dataclass

import psutil

# Flag a repetition when other processes kept, on average, at least half a core busy during it.
# An idle machine's background (daemons, the Dagster instance) stays near 0.05 cores; half a
# core is a process competing for a core, for caches and for memory bandwidth.
CONCURRENT_LOAD_CORES = 0.5


@dataclass(frozen=True)
class CpuSample:
    wall: float  # time.monotonic()
    machine_busy: float  # CPU-seconds all processes have spent busy, summed over cores
    own: float  # CPU-seconds of this process (all threads) and its waited-for children


@dataclass(frozen=True)
class Interference:
    wall_seconds: float
    other_cores: float  # average number of cores busy with other processes during the interval
    load_average_1m: float | None  # the OS's 1-minute load average at the end (None: unavailable)
    cores: int
    threshold_cores: float = CONCURRENT_LOAD_CORES

    @property
    def flag(self) -> str:
        """'' when quiet, else a sentence for the row's flags."""
        if self.other_cores < self.threshold_cores:
            return ""
        load = f", load average {self.load_average_1m:.1f}" if self.load_average_1m is not None else ""
        return (
            f"concurrent load: other processes kept {self.other_cores:.2f} of {self.cores} cores busy "
            f"during this repetition{load}: its time and energy are not those of the variant alone"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "flag": self.flag}


def _busy_seconds(times) -> float:
    # Everything but idle and iowait (a core waiting on disk is free for others to use).
    return sum(value for name, value in times._asdict().items() if name not in ("idle", "iowait", "guest", "guest_nice"))


def cpu_sample() -> CpuSample:
    own = psutil.Process().cpu_times()
    return CpuSample(
        wall=time.monotonic(),
        machine_busy=_busy_seconds(psutil.cpu_times()),
        own=own.user + own.system + own.children_user + own.children_system,
    )


def interference_between(before: CpuSample, after: CpuSample,
                         threshold_cores: float = CONCURRENT_LOAD_CORES) -> Interference:
    wall = max(after.wall - before.wall, 1e-9)
    others = (after.machine_busy - before.machine_busy) - (after.own - before.own)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    # Counters tick at 100 Hz: a short interval can read slightly negative; that is no load.
    return Interference(wall, max(others, 0.0) / wall, load, psutil.cpu_count() or 1, threshold_cores)


class InterferenceMonitor:
    """Call start() before a repetition and stop() after it (outside the timed region)."""

    def __init__(self, threshold_cores: float = CONCURRENT_LOAD_CORES) -> None:
        self.threshold_cores = threshold_cores
        self._before: CpuSample | None = None

    def start(self) -> None:
        self._before = cpu_sample()

    def stop(self) -> Interference:
        if self._before is None:
            raise RuntimeError("InterferenceMonitor.stop() without start()")
        before, self._before = self._before, None
        return interference_between(before, cpu_sample(), self.threshold_cores)
