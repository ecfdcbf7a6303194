"""Other processes' load during a repetition: the arithmetic by hand, then real busy processes."""

import subprocess
import sys
import time

import polars as pl

from llmopt_assets.measure.energy.base import EnergyMeter, EnergyReading
from llmopt_assets.measure.interference import CpuSample, InterferenceMonitor, cpu_sample, interference_between
from llmopt_assets.measure.repetitions import RepetitionProtocol, run_repetitions
from llmopt_assets.scoring.table import concurrent_load_flag

BURN = "import time\nend = time.monotonic() + 20\nwhile time.monotonic() < end: pass\n"


def test_other_cores_are_machine_busy_time_minus_our_own_over_wall_time() -> None:
    before = CpuSample(wall=100.0, machine_busy=50.0, own=10.0)
    # 2 s of wall time: the machine was busy 4 CPU-seconds, 1 of them ours -> 1.5 cores of others.
    loaded = interference_between(before, CpuSample(wall=102.0, machine_busy=54.0, own=11.0))
    assert loaded.other_cores == 1.5
    assert loaded.flag.startswith("concurrent load: other processes kept 1.50 of")
    # Our own work is not interference: busy 1.2 CPU-s, 1.0 ours -> 0.1 cores, no flag.
    quiet = interference_between(before, CpuSample(wall=102.0, machine_busy=51.2, own=11.0))
    assert abs(quiet.other_cores - 0.1) < 1e-9 and quiet.flag == ""


def test_our_own_cpu_time_is_counted_as_ours() -> None:
    before = cpu_sample()
    end = time.process_time() + 0.5
    while time.process_time() < end:
        pass
    assert cpu_sample().own - before.own >= 0.45


class NullMeter(EnergyMeter):
    name = "null"

    def start(self) -> None:
        pass

    def stop(self) -> EnergyReading:
        return EnergyReading("null", 0.0, ())

    def probe(self) -> str:
        return "measures nothing"


def test_repetitions_beside_two_busy_processes_are_flagged() -> None:
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(2)]
    try:
        time.sleep(0.3)  # let them start spinning
        repetitions = run_repetitions(lambda: time.sleep(1.0), NullMeter(), RepetitionProtocol(0, 2),
                                      monitor=InterferenceMonitor())
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    for repetition in repetitions:
        # Two spinning processes keep at least one core busy even on a machine shared by others.
        assert repetition.interference.other_cores >= 1.0
        assert "concurrent load" in repetition.interference.flag
    rows = pl.DataFrame({"other_process_cores": [r.interference.other_cores for r in repetitions],
                         "interference_flags": [r.interference.flag for r in repetitions]})
    [flag] = concurrent_load_flag(rows)
    assert flag.startswith("measured under concurrent load in 2 of 2 repetitions")


def test_each_arm_of_a_paired_comparison_records_the_load_beside_it() -> None:
    from llmopt_assets.measure.comparison import ComparisonProtocol, run_comparison

    def work(units: int) -> None:
        time.sleep(0.002 * units)

    protocol = ComparisonProtocol(pairs=2, min_repetition_seconds=0.02, max_warmup_rounds=2)
    result = run_comparison(work, work, NullMeter(), protocol)
    assert len(result.repetitions) == 4
    assert all(r.interference is not None and r.interference.wall_seconds > 0 for r in result.repetitions)
