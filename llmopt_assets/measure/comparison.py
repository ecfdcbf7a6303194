"""A paired, interleaved experiment: the base and a variant timed and metered in one process.

Two separately measured runs differ by more than their own noise (the machine's load, clocks
and caches drift between them), so a variant/base ratio from two runs can look significant
when nothing changed. Here both arms are loaded side by side and measured alternately on the
same work, after the same warm-up, so whatever slows the machine down slows both arms of a
pair and cancels in their ratio (`measure.stats.paired_ratio`).

The protocol, after pyperf (calibration of loops, warm-ups), hyperfine and Georges et al. 2007:
1. Calibration (auto-ranging, as timeit/pyperf do): run both arms on 1 unit of work, scale the
   units until the *faster* arm's repetition lasts at least ``min_repetition_seconds`` (both
   arms do the same units; the slower one then lasts longer).
2. Warm-up: rounds of both arms at the calibrated units until each arm's last two timings agree
   within ``warmup_tolerance`` (steady state), or ``max_warmup_rounds`` (then recorded as not
   stable). A warm-up round that falls below the minimum recalibrates.
3. Measurement: ``pairs`` pairs in blocks of two, each block ABBA or BAAB by a seeded coin, so a
   linear drift inside a block cancels and neither arm always goes first (the MLPerf rules ask
   for a run order that does not favour one system). Each repetition has its own energy reading.
Every round and decision is recorded so the experiment can be judged afterwards.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .energy.base import EnergyMeter, EnergyReading
from .interference import Interference, InterferenceMonitor

# Bump with any change to the paired experiment (order, calibration, warm-up, what is timed):
# Dagster then marks every comparison_run stale.
CODE_VERSION = "1"

ARMS = ("base", "variant")
Work = Callable[[int], object]  # runs the given number of units of work (e.g. perplexity windows)
Clock = Callable[[], float]


@dataclass(frozen=True)
class ComparisonProtocol:
    pairs: int = 30
    min_repetition_seconds: float = 1.0  # per repetition of the faster arm (CPU default)
    max_warmup_rounds: int = 10  # rounds at the calibrated units before giving up on stability
    warmup_tolerance: float = 0.05  # relative change between a round and the previous one
    seed: int = 0  # of the ABBA/BAAB block order
    cooldown_seconds: float = 0.0  # pause before each measured repetition
    max_units: int = 100_000  # calibration ceiling, for work that takes no measurable time

    def __post_init__(self) -> None:
        problems = []
        if self.pairs < 2:
            problems.append(f"pairs must be at least 2 for an interval, got {self.pairs}")
        if not self.min_repetition_seconds > 0:
            problems.append(f"min_repetition_seconds must be positive, got {self.min_repetition_seconds}")
        if self.max_warmup_rounds < 2:
            problems.append(f"max_warmup_rounds must be at least 2 to judge stability, got {self.max_warmup_rounds}")
        if not 0 < self.warmup_tolerance < 1:
            problems.append(f"warmup_tolerance must be in (0, 1), got {self.warmup_tolerance}")
        if self.cooldown_seconds < 0 or self.max_units < 1:
            problems.append("cooldown_seconds must be ≥ 0 and max_units ≥ 1")
        if problems:
            raise ValueError("invalid comparison protocol: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


def arm_schedule(pairs: int, seed: int) -> list[tuple[int, str]]:
    """(pair, arm) in run order: blocks of two pairs, ABBA or BAAB by a seeded coin; an odd last
    pair is a half block in the coin's order."""
    coin = random.Random(seed)
    order: list[tuple[int, str]] = []
    for first_pair in range(0, pairs, 2):
        first, second = ARMS if coin.random() < 0.5 else ARMS[::-1]
        order += [(first_pair, first), (first_pair, second)]
        if first_pair + 1 < pairs:
            order += [(first_pair + 1, second), (first_pair + 1, first)]
    return order


@dataclass(frozen=True)
class Calibration:
    """What was done before measuring: every round (units, seconds per arm, phase) and the outcome."""

    units: int  # units of work per measured repetition
    reached_minimum: bool  # False: max_units hit before the faster arm lasted min_repetition_seconds
    stable: bool  # the warm-up reached steady state before its cap
    warmup_rounds: int  # rounds at the final units
    rounds: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ArmRepetition:
    pair: int
    arm: str
    position: int  # 0-based place in the run order
    seconds: float
    energy: EnergyReading
    interference: Interference | None = None  # other processes' load during it (None: unmonitored)


@dataclass(frozen=True)
class ComparisonResult:
    protocol: ComparisonProtocol
    calibration: Calibration
    repetitions: list[ArmRepetition]

    def values(self, arm: str, what: str = "seconds") -> list[float | None]:
        """Per pair, in pair order: seconds, or joules (None where the meter had none)."""
        chosen = sorted((r for r in self.repetitions if r.arm == arm), key=lambda r: r.pair)
        return [r.seconds if what == "seconds" else r.energy.joules for r in chosen]


class ComparisonError(RuntimeError):
    """An arm raised; ``completed`` keeps the repetitions measured before it."""

    def __init__(self, message: str, completed: list[ArmRepetition]):
        super().__init__(message)
        self.completed = completed


def _timed(work: Work, units: int, clock: Clock) -> float:
    started = clock()
    work(units)
    return clock() - started


def calibrate_and_warm_up(arms: dict[str, Work], protocol: ComparisonProtocol, clock: Clock) -> Calibration:
    """Scale the units until the faster arm reaches the minimum, then warm up to steady state."""
    units = 1
    rounds: list[dict] = []
    settled: list[dict] = []  # rounds at the current units
    reached_minimum = stable = False
    while True:
        # Alternate which arm goes first, so neither is always the one on a cold cache.
        order = ARMS if len(rounds) % 2 == 0 else ARMS[::-1]
        timing = {arm: _timed(arms[arm], units, clock) for arm in order}
        fastest = min(timing.values())
        record = {"units": units, **{f"{arm}_seconds": timing[arm] for arm in ARMS}}
        if fastest < protocol.min_repetition_seconds and units < protocol.max_units:
            record["phase"] = "calibration"
            rounds.append(record)
            # Extrapolate with 10% margin (a first, cold run is slow and would undershoot), at
            # least one more unit, at most 100× in one step (a zero-time fake would jump to the cap).
            wanted = units * protocol.min_repetition_seconds * 1.1 / max(fastest, 1e-9)
            units = min(protocol.max_units, max(units + 1, min(math.ceil(wanted), units * 100)))
            settled = []
            continue
        reached_minimum = fastest >= protocol.min_repetition_seconds
        record["phase"] = "warm-up"
        rounds.append(record)
        settled.append(record)
        if len(settled) >= 2:
            previous, last = settled[-2], settled[-1]
            stable = all(
                abs(last[f"{arm}_seconds"] - previous[f"{arm}_seconds"]) <= protocol.warmup_tolerance * previous[f"{arm}_seconds"]
                for arm in ARMS
            )
        if stable or len(settled) >= protocol.max_warmup_rounds:
            return Calibration(units, reached_minimum, stable, len(settled), rounds)


def run_comparison(
    base: Work,
    variant: Work,
    meter: EnergyMeter,
    protocol: ComparisonProtocol,
    *,
    clock: Clock = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    on_repetition: Callable[[ArmRepetition], None] | None = None,
    monitor: InterferenceMonitor | None = None,
) -> ComparisonResult:
    """Calibrate, warm up, then measure ``protocol.pairs`` interleaved pairs.

    Each measured repetition: optional cooldown, meter.start(), the clock around exactly the
    work, meter.stop(). An arm that raises stops the experiment with ``ComparisonError`` (the
    meter stopped, the completed repetitions kept). Around each (outside the clock and the meter)
    ``monitor`` measures other processes' CPU load, so a pair that shared the machine is flagged.
    """
    monitor = monitor or InterferenceMonitor()
    arms = {"base": base, "variant": variant}
    try:
        calibration = calibrate_and_warm_up(arms, protocol, clock)
    except Exception as error:
        raise ComparisonError(f"calibration/warm-up failed: {error!r}", []) from error
    completed: list[ArmRepetition] = []
    for position, (pair, arm) in enumerate(arm_schedule(protocol.pairs, protocol.seed)):
        if protocol.cooldown_seconds:
            sleep(protocol.cooldown_seconds)
        monitor.start()
        meter.start()
        try:
            seconds = _timed(arms[arm], calibration.units, clock)
        except Exception as error:
            with contextlib.suppress(Exception):  # keep the arm's error, not the meter's
                meter.stop()
            raise ComparisonError(
                f"{arm} repetition of pair {pair} failed after {len(completed)} completed: {error!r}", completed
            ) from error
        energy = meter.stop()
        repetition = ArmRepetition(pair, arm, position, seconds, energy, monitor.stop())
        completed.append(repetition)
        if on_repetition is not None:
            on_repetition(repetition)
    return ComparisonResult(protocol, calibration, completed)
