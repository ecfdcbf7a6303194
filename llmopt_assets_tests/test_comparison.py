"""The paired comparison: its run order, calibration and warm-up on a simulated clock, and a real
A/A and A/B (1.3× the work) on a tiny model."""

import itertools

import pytest
import torch

from llmopt_assets.measure.comparison import (
    ComparisonError,
    ComparisonProtocol,
    arm_schedule,
    calibrate_and_warm_up,
    run_comparison,
)
from llmopt_assets.measure.energy.base import ComponentEnergy, EnergyMeter, EnergyReading
from llmopt_assets.measure.energy.cpu_time import CpuTimeMeter
from llmopt_assets.measure.runs import window_batches, window_work
from llmopt_assets.measure.stats import paired_ratio
from llmopt_assets_tests.tiny_models import tiny_model


class SimulatedMachine:
    """A clock that only moves when simulated work runs: arm cost per unit × slowdown, plus an
    extra cost on each arm's first calls (a cold start)."""

    def __init__(self, seconds_per_unit: dict[str, float], cold_calls: int = 0, cold_extra: float = 0.0,
                 watts: float = 10.0):
        self.now = 0.0
        self.seconds_per_unit = seconds_per_unit
        self.calls = {arm: 0 for arm in seconds_per_unit}
        self.cold_calls, self.cold_extra, self.watts = cold_calls, cold_extra, watts
        self.log: list[tuple[str, int]] = []

    def clock(self) -> float:
        return self.now

    def arm(self, name: str):
        def work(units: int) -> None:
            self.calls[name] += 1
            self.log.append((name, units))
            cold = self.cold_extra if self.calls[name] <= self.cold_calls else 0.0
            self.now += units * self.seconds_per_unit[name] + cold

        return work


class SimulatedMeter(EnergyMeter):
    """Joules = the machine's watts × simulated seconds between start and stop."""

    name = "simulated"

    def __init__(self, machine: SimulatedMachine):
        self.machine = machine
        self.started_at: float | None = None

    def probe(self) -> str:
        return "simulated: for tests."

    def start(self) -> None:
        assert self.started_at is None, "started twice"
        self.started_at = self.machine.now

    def stop(self) -> EnergyReading:
        assert self.started_at is not None, "stopped before start"
        seconds = self.machine.now - self.started_at
        self.started_at = None
        return EnergyReading(self.name, seconds, (ComponentEnergy("cpu", seconds * self.machine.watts, "counter", "sim"),))


@pytest.mark.parametrize("pairs", [2, 7, 30])
def test_schedule_measures_each_pair_once_per_arm_in_abba_or_baab_blocks(pairs: int) -> None:
    order = arm_schedule(pairs, seed=1)
    assert sorted(order) == sorted((p, arm) for p in range(pairs) for arm in ("base", "variant"))
    arms = "".join("A" if arm == "base" else "B" for _, arm in order)
    blocks = [arms[i:i + 4] for i in range(0, len(arms), 4)]
    assert all(block in ("ABBA", "BAAB") for block in blocks if len(block) == 4)
    assert all(block in ("AB", "BA") for block in blocks if len(block) == 2)
    assert [p for p, _ in order] == sorted(p for p, _ in order)  # pairs run one after another


def test_schedule_is_seeded_and_uses_both_block_orders() -> None:
    assert arm_schedule(20, seed=5) == arm_schedule(20, seed=5)
    first_arms = {tuple(arm for _, arm in arm_schedule(20, seed)[::4]) for seed in range(5)}
    assert len(first_arms) > 1  # the seed changes the order
    firsts = [arm for _, arm in arm_schedule(200, seed=0)[::4]]
    assert 30 < firsts.count("base") < 70  # a fair coin over 50 blocks


def test_calibration_scales_the_units_until_the_faster_arm_lasts_the_minimum() -> None:
    machine = SimulatedMachine({"base": 0.3, "variant": 0.45})
    calibration = calibrate_and_warm_up(
        {"base": machine.arm("base"), "variant": machine.arm("variant")},
        ComparisonProtocol(pairs=2, min_repetition_seconds=1.0), machine.clock,
    )
    # 1 unit: 0.3 s; ×1.0/0.3 with 10% margin → ceil(3.67) = 4 units = 1.2 s; two equal rounds: stable.
    assert calibration.units == 4 and calibration.reached_minimum and calibration.stable
    assert [r["units"] for r in calibration.rounds] == [1, 4, 4]
    assert [r["phase"] for r in calibration.rounds] == ["calibration", "warm-up", "warm-up"]
    assert calibration.rounds[1]["base_seconds"] == pytest.approx(1.2)
    assert calibration.rounds[1]["variant_seconds"] == pytest.approx(1.8)
    assert calibration.warmup_rounds == 2


def test_a_cold_start_recalibrates_and_warms_up_until_stable() -> None:
    # The first two calls of each arm cost 0.5 s more: calibration undershoots, then corrects.
    machine = SimulatedMachine({"base": 0.3, "variant": 0.3}, cold_calls=2, cold_extra=0.5)
    calibration = calibrate_and_warm_up(
        {"base": machine.arm("base"), "variant": machine.arm("variant")},
        ComparisonProtocol(pairs=2, min_repetition_seconds=1.0), machine.clock,
    )
    # 1 unit, cold: 0.8 s → ceil(1.375) = 2 units; still cold: 1.1 s, a warm-up round; warm:
    # 0.6 s, below the minimum → recalibrated to ceil(3.67) = 4 units; then 1.2 s twice: stable.
    assert [r["units"] for r in calibration.rounds] == [1, 2, 2, 4, 4]
    assert [r["phase"] for r in calibration.rounds] == ["calibration", "warm-up", "calibration", "warm-up", "warm-up"]
    assert calibration.units == 4 and calibration.stable and calibration.reached_minimum


def test_warm_up_that_never_settles_stops_at_the_cap_and_says_so() -> None:
    machine = SimulatedMachine({"base": 1.0, "variant": 1.0})
    speeds = itertools.count()

    def erratic(units: int) -> None:  # alternately 1.0 and 1.5 s per unit
        machine.now += units * (1.0 if next(speeds) % 2 else 1.5)

    calibration = calibrate_and_warm_up(
        {"base": erratic, "variant": machine.arm("variant")},
        ComparisonProtocol(pairs=2, max_warmup_rounds=4), machine.clock,
    )
    assert not calibration.stable and calibration.warmup_rounds == 4 and calibration.units == 1


def test_work_too_small_to_time_stops_at_the_unit_ceiling() -> None:
    calibration = calibrate_and_warm_up(
        {"base": lambda units: None, "variant": lambda units: None},
        ComparisonProtocol(pairs=2, max_units=500), lambda: 0.0,
    )
    assert calibration.units == 500 and not calibration.reached_minimum


def test_every_repetition_is_metered_and_the_pairs_give_the_true_ratio() -> None:
    machine = SimulatedMachine({"base": 0.2, "variant": 0.3})
    protocol = ComparisonProtocol(pairs=6, min_repetition_seconds=1.0, seed=3)
    result = run_comparison(machine.arm("base"), machine.arm("variant"), SimulatedMeter(machine), protocol,
                            clock=machine.clock)
    assert result.calibration.units == 6  # ceil(1.1 / 0.2) = 6 units: 1.2 s for the faster arm
    assert len(result.repetitions) == 12
    assert [(r.pair, r.arm) for r in result.repetitions] == arm_schedule(6, 3)
    assert result.values("base") == pytest.approx([1.2] * 6)
    assert result.values("variant", "joules") == pytest.approx([18.0] * 6)  # 1.8 s × 10 W
    assert paired_ratio(result.values("variant"), result.values("base")).ratio == pytest.approx(1.5)
    measured = machine.log[-12:]  # the measured calls all ran the calibrated units
    assert all(units == 6 for _, units in measured)


def test_a_failing_arm_stops_the_meter_and_keeps_what_was_measured() -> None:
    machine = SimulatedMachine({"base": 0.5, "variant": 0.5})
    meter = SimulatedMeter(machine)
    variant = machine.arm("variant")

    def breaks_on_its_fifth_call(units: int) -> None:
        variant(units)
        # 3 rounds before measuring (1 unit: 0.5 s → 3 units, then 1.5 s twice), so the 5th call
        # is the variant's 2nd measured repetition.
        if machine.calls["variant"] == 5:
            raise MemoryError("cannot allocate")

    with pytest.raises(ComparisonError, match="MemoryError") as raised:
        run_comparison(machine.arm("base"), breaks_on_its_fifth_call, meter, ComparisonProtocol(pairs=4),
                       clock=machine.clock)
    assert meter.started_at is None  # stopped
    completed = raised.value.completed
    assert [r.arm for r in completed].count("variant") == 1
    failed_at = [i for i, (_, arm) in enumerate(arm_schedule(4, 0)) if arm == "variant"][1]
    assert [r.position for r in completed] == list(range(failed_at))


@pytest.mark.parametrize("bad", [dict(pairs=1), dict(min_repetition_seconds=0.0), dict(max_warmup_rounds=1),
                                 dict(warmup_tolerance=0.0), dict(cooldown_seconds=-1.0)])
def test_invalid_protocols_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="invalid comparison protocol"):
        ComparisonProtocol(**bad)


# Real runs: a tiny GPT-2 on short windows, repetitions of 50 ms (the suite must stay fast).
REAL = ComparisonProtocol(pairs=12, min_repetition_seconds=0.05, max_warmup_rounds=4, seed=0)


def _tiny_batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return window_batches(torch.randint(0, 160, (16 * 32,), generator=generator), 32, "cpu")


def _covers_1(ratio) -> bool:
    return ratio.ci95_low <= 1.0 <= ratio.ci95_high


def test_real_a_a_comparison_of_two_loaded_copies_covers_1() -> None:
    batches = _tiny_batches()
    first, second = tiny_model("gpt2", seed=0), tiny_model("gpt2", seed=0)  # two separate copies
    # 99% here, not 95%: a correct A/A interval misses 1 in 20 runs by design, and a test suite
    # must not fail that often; and a second, independent experiment after a miss: a correct
    # method misses twice in a row 1 time in 10,000, a biased one (the unpaired design under
    # drift) nearly always. The benchmark (benchmarks/paired_timing.py) reports the 95% one.
    for attempt in range(2):
        result = run_comparison(window_work(first, batches), window_work(second, batches), CpuTimeMeter(), REAL)
        time_ratio = paired_ratio(result.values("variant"), result.values("base"), alpha=0.01)
        energy_ratio = paired_ratio(result.values("variant", "joules"), result.values("base", "joules"), alpha=0.01)
        if _covers_1(time_ratio) and _covers_1(energy_ratio):
            break
    assert _covers_1(time_ratio), (attempt, time_ratio)
    assert _covers_1(energy_ratio), (attempt, energy_ratio)
    assert result.calibration.reached_minimum


def test_real_a_b_comparison_detects_1_3_times_the_work() -> None:
    batches = _tiny_batches()
    model = tiny_model("gpt2", seed=0)
    forward = window_work(model, batches)

    def base(units: int) -> None:
        forward(10 * units)

    def variant(units: int) -> None:  # the same forward passes, 13 for every 10
        forward(13 * units)

    # 20 pairs: on a CPU shared with other jobs a 50 ms repetition can vary by tens of percent.
    for attempt in range(2):  # a second, independent experiment if the first misses (power < 1)
        result = run_comparison(base, variant, CpuTimeMeter(), ComparisonProtocol(**{**REAL.to_dict(), "pairs": 20}))
        time_ratio = paired_ratio(result.values("variant"), result.values("base"))
        if time_ratio.significant and time_ratio.ci95_low > 1.0:
            break
    assert time_ratio.significant and time_ratio.ci95_low > 1.0, (attempt, time_ratio)
    assert 1.1 < time_ratio.ratio < 1.6, time_ratio
