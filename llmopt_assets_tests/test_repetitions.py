import time

import pytest

from llmopt_assets.measure.energy.base import ComponentEnergy, EnergyMeter, EnergyReading
from llmopt_assets.measure.repetitions import (
    RepetitionError,
    RepetitionProtocol,
    run_repetitions,
)


class FakeMeter(EnergyMeter):
    """Counts calls; start/stop take ``overhead_s`` so we can see it is not in the timing."""

    name = "fake"

    def __init__(self, overhead_s: float = 0.0):
        self.overhead_s = overhead_s
        self.starts = 0
        self.stops = 0
        self.running = False

    def probe(self) -> str:
        return "fake: for tests."

    def start(self) -> None:
        assert not self.running, "started twice"
        self.running = True
        self.starts += 1
        time.sleep(self.overhead_s)

    def stop(self) -> EnergyReading:
        time.sleep(self.overhead_s)
        self.running = False
        self.stops += 1
        return EnergyReading("fake", 1.0, (ComponentEnergy("cpu", float(self.stops), "estimate", "fake"),))


def counting_workload():
    calls = []

    def workload() -> int:
        calls.append(len(calls) + 1)
        return calls[-1]

    return workload, calls


def test_warmups_run_but_are_not_measured():
    workload, calls = counting_workload()
    meter = FakeMeter()
    reps = run_repetitions(workload, meter, RepetitionProtocol(warmup=2, repetitions=3))
    assert len(calls) == 5
    assert meter.starts == meter.stops == 3
    assert [r.index for r in reps] == [0, 1, 2]
    assert [r.value for r in reps] == [3, 4, 5]  # the first two calls were warm-ups
    assert [r.energy.joules for r in reps] == [1.0, 2.0, 3.0]


def test_time_is_the_workload_only_not_meter_or_cooldown():
    # The meter's start and stop take 10x the workload: a time that included them could not pass
    # (and a 20 ms sleep stretched 10x by a loaded machine is a margin CI does not reach).
    meter = FakeMeter(overhead_s=0.2)
    t0 = time.perf_counter()
    reps = run_repetitions(lambda: time.sleep(0.02), meter, RepetitionProtocol(0, 3, cooldown_seconds=0.03))
    total = time.perf_counter() - t0
    assert all(0.02 <= r.seconds < 0.2 for r in reps)
    assert total >= 3 * (0.02 + 0.03 + 2 * 0.2)


def test_on_repetition_sees_each_run_in_order():
    workload, _ = counting_workload()
    seen = []
    run_repetitions(workload, FakeMeter(), RepetitionProtocol(1, 4), on_repetition=lambda r: seen.append(r.index))
    assert seen == [0, 1, 2, 3]


def test_failure_keeps_completed_repetitions_and_stops_meter():
    workload, calls = counting_workload()

    def flaky() -> int:
        value = workload()
        if value == 4:  # 1 warm-up, then measured runs 2, 3 succeed, the third measured fails
            raise RuntimeError("out of memory")
        return value

    meter = FakeMeter()
    with pytest.raises(RepetitionError) as error:
        run_repetitions(flaky, meter, RepetitionProtocol(1, 5))
    assert [r.value for r in error.value.completed] == [2, 3]
    assert error.value.failed_index == 2
    assert isinstance(error.value.__cause__, RuntimeError)
    assert meter.starts == meter.stops == 3 and not meter.running


def test_warmup_failure():
    def broken() -> None:
        raise ValueError("bad")

    meter = FakeMeter()
    with pytest.raises(RepetitionError) as error:
        run_repetitions(broken, meter, RepetitionProtocol(2, 3))
    assert error.value.completed == [] and error.value.failed_index == -1
    assert meter.starts == 0


@pytest.mark.parametrize("bad", [dict(warmup=-1, repetitions=1), dict(warmup=0, repetitions=0),
                                 dict(warmup=0, repetitions=1, cooldown_seconds=-1.0)])
def test_invalid_protocol(bad):
    with pytest.raises(ValueError):
        RepetitionProtocol(**bad)


def test_peak_rss_grows_with_a_large_allocation() -> None:
    import subprocess
    import sys

    # A fresh process, so that earlier tests' peaks do not hide the allocation.
    script = (
        "from llmopt_assets.measure.hardware import peak_rss_mb\n"
        "before = peak_rss_mb()\n"
        "block = bytearray(200 * 1024 * 1024)\n"
        "block[::4096] = b'\\x01' * len(block[::4096])\n"
        "print(before, peak_rss_mb())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, after = map(float, out.stdout.split())
    assert after >= before + 150
