import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from llmopt_assets.measure.energy import (
    METERS,
    AutoMeter,
    CarbonTrackerMeter,
    ComponentEnergy,
    CpuTimeMeter,
    EnergyReading,
    NvmlMeter,
    RaplMeter,
    counter_delta,
    make_meter,
    mixed_methods_flag,
    power_flags,
    remove_carbontracker_pue,
)
from llmopt_assets.measure.energy.codecarbon_meter import codecarbon_method
from llmopt_assets.measure.energy.nvml import trapezoid_joules


# ---------------------------------------------------------------- readings


def test_reading_sums_components_times_pue_and_reports_weakest_method():
    reading = EnergyReading(
        "x", 2.0,
        (ComponentEnergy("gpu", 100.0, "counter", "a"), ComponentEnergy("cpu", 20.0, "estimate", "b")),
        pue=1.5,
    )
    assert reading.joules == pytest.approx(180.0)
    assert reading.average_watts == pytest.approx(90.0)
    assert reading.method == "estimate" and reading.is_estimate
    assert json.loads(json.dumps(reading.to_dict()))["components"][0]["method"] == "counter"


def test_unavailable_is_none_not_zero():
    nothing = EnergyReading("x", 1.0, (ComponentEnergy("cpu", None, "unavailable", "rapl", "no rapl"),))
    assert nothing.joules is None
    assert nothing.average_watts is None
    assert nothing.method == "unavailable" and not nothing.is_estimate
    partial = EnergyReading(
        "x", 1.0,
        (ComponentEnergy("gpu", 5.0, "sampled-power", "a"), ComponentEnergy("cpu", None, "unavailable", "b")),
    )
    assert partial.joules == 5.0 and partial.method == "sampled-power"
    with pytest.raises(ValueError):
        ComponentEnergy("cpu", 0.0, "unavailable", "rapl")
    with pytest.raises(ValueError):
        ComponentEnergy("cpu", None, "estimate", "model")


# ---------------------------------------------------------------- RAPL


def _rapl_domain(root: Path, dirname: str, name: str, energy_uj: int, max_uj: int) -> Path:
    path = root / dirname
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


def _set_counter(domain: Path, energy_uj: int) -> None:
    # atomic, like a sysfs read: the meter's poller must never see a half-written file
    tmp = domain / "energy_uj.tmp"
    tmp.write_text(f"{energy_uj}\n")
    os.replace(tmp, domain / "energy_uj")


def test_counter_delta_hand_values():
    assert counter_delta(100, 350, 1000) == 250
    # wrapped: 100 µJ to reach the top, then 50 more from 0
    assert counter_delta(900, 50, 1000) == 150


def test_rapl_meter_reads_package_and_dram_across_a_wrap(tmp_path):
    max_uj = 262_143_328_850
    package = _rapl_domain(tmp_path, "intel-rapl:0", "package-0", max_uj - 1_000_000, max_uj)
    _rapl_domain(tmp_path, "intel-rapl:0:0", "core", 10, max_uj)  # inside the package: ignored
    dram = _rapl_domain(tmp_path, "intel-rapl:0:1", "dram", 2_000_000, max_uj)
    meter = RaplMeter(tmp_path, poll_interval_s=0)
    assert "intel-rapl:0 (package-0)" in meter.probe()
    meter.start()
    (package / "energy_uj").write_text("500000\n")  # wrapped past max
    (dram / "energy_uj").write_text("5000000\n")
    reading = meter.stop()
    by_name = {c.component: c for c in reading.components}
    assert set(by_name) == {"package", "ram"}
    assert by_name["package"].joules == pytest.approx(1.5)  # 1.0 J to the top + 0.5 J
    assert by_name["ram"].joules == pytest.approx(3.0)
    assert reading.joules == pytest.approx(4.5)
    assert reading.method == "counter"


def test_rapl_polling_counts_two_wraps(tmp_path):
    max_uj = 1_000_000  # wraps every 1 J
    package = _rapl_domain(tmp_path, "intel-rapl:0", "package-0", 0, max_uj)
    meter = RaplMeter(tmp_path, poll_interval_s=0.01)
    meter.start()
    # 0.8 J steps, each left long enough for the poller to see it: 0.8, 1.6, 2.4 J total
    for total_uj in (800_000, 1_600_000, 2_400_000):
        _set_counter(package, total_uj % max_uj)
        time.sleep(0.1)
    reading = meter.stop()
    assert reading.joules == pytest.approx(2.4)


def test_rapl_unavailable(tmp_path):
    reading_meter = RaplMeter(tmp_path / "missing", poll_interval_s=0)
    assert reading_meter.probe().startswith("rapl: unavailable")
    reading_meter.start()
    reading = reading_meter.stop()
    assert reading.joules is None and reading.components[0].method == "unavailable"
    # a domain whose counter cannot be read is unavailable too, never 0
    broken = _rapl_domain(tmp_path, "intel-rapl:0", "package-0", 0, 1000)
    (broken / "energy_uj").unlink()
    (broken / "energy_uj").mkdir()
    meter = RaplMeter(tmp_path, poll_interval_s=0)
    meter.start()
    assert meter.stop().joules is None


# ---------------------------------------------------------------- NVML


class FakeNvml:
    """The part of pynvml the meter uses. GPU i has a counter if ``counters[i]`` is not None."""

    class NVMLError(Exception):
        pass

    def __init__(self, counters_mj, watts=None, fail_init=False):
        self.counters_mj = list(counters_mj)
        self.watts = watts or (lambda index, t: 0.0)
        self.fail_init = fail_init
        self.power_calls: list[tuple[float, float]] = []
        self.shutdowns = 0

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.counters_mj)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, handle):
        return f"Fake GPU {handle}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if self.counters_mj[handle] is None:
            raise self.NVMLError("Not Supported")
        return self.counters_mj[handle]

    def nvmlDeviceGetPowerUsage(self, handle):
        t = time.perf_counter()
        watts = self.watts(handle, t)
        self.power_calls.append((t, watts))
        return int(round(watts * 1000))


def test_nvml_counter():
    fake = FakeNvml([1_000_000, 5_000])
    meter = NvmlMeter(nvml=fake)
    assert "energy counter" in meter.probe()
    meter.start()
    fake.counters_mj = [1_250_000, 6_500]
    reading = meter.stop()
    assert [c.joules for c in reading.components] == [pytest.approx(250.0), pytest.approx(1.5)]
    assert reading.method == "counter"
    assert reading.joules == pytest.approx(251.5)
    meter.close()
    assert fake.shutdowns == 1


def test_nvml_device_indices_select_gpus():
    fake = FakeNvml([0, 0, 0])
    meter = NvmlMeter(device_indices=[2], nvml=fake)
    meter.start()
    fake.counters_mj = [10_000, 20_000, 30_000]
    reading = meter.stop()
    assert len(reading.components) == 1
    assert reading.components[0].source.startswith("nvml:2")
    assert reading.joules == pytest.approx(30.0)


class StampingClock:
    """time.perf_counter that remembers, per thread, the stamp it gave last: the fake GPU's power
    is read at the meter's own stamp, so a thread preempted between stamp and read (a loaded CI
    machine) cannot move the ramp under the integral."""

    def __init__(self):
        self.local = threading.local()

    def __call__(self) -> float:
        self.local.last = time.perf_counter()
        return self.local.last


def test_nvml_sampled_power_integrates_a_ramp():
    clock = StampingClock()
    origin = time.perf_counter()
    # no energy counter (pre-Volta); power rises 100 W + 400 W/s
    read_at: list[float] = []  # the meter's stamp of each power reading

    def ramp(index: int, t: float) -> float:
        read_at.append(clock.local.last)
        return 100.0 + 400.0 * (read_at[-1] - origin)

    fake = FakeNvml([None], watts=ramp)
    meter = NvmlMeter(sample_interval_s=0.01, nvml=fake, clock=clock)
    assert "sampled power" in meter.probe()
    meter.start()
    time.sleep(0.3)
    reading = meter.stop()
    assert reading.method == "sampled-power"
    assert len(fake.power_calls) >= 5
    t_first, t_last = read_at[0], read_at[-1]
    # exact integral of the ramp between the first and last sample (mW rounding aside)
    def antiderivative(t):
        return 100.0 * (t - origin) + 200.0 * (t - origin) ** 2
    expected = antiderivative(t_last) - antiderivative(t_first)
    assert reading.joules == pytest.approx(expected, rel=1e-4)


def test_trapezoid_hand_values():
    assert trapezoid_joules([(0.0, 10.0), (1.0, 20.0), (3.0, 20.0)]) == pytest.approx(15.0 + 40.0)
    assert trapezoid_joules([(0.0, 10.0)]) == 0.0


def test_nvml_unavailable_is_none():
    meter = NvmlMeter(nvml=FakeNvml([], fail_init=True))
    assert meter.probe().startswith("nvml: unavailable")
    meter.start()
    reading = meter.stop()
    assert reading.joules is None and reading.method == "unavailable"
    assert "Library Not Found" in reading.components[0].note


# ---------------------------------------------------------------- auto / make_meter


def test_auto_prefers_gpu_counter_and_leaves_unmeasured_cpu_unavailable(tmp_path):
    fake = FakeNvml([0])
    meter = AutoMeter(nvml=fake, powercap_root=tmp_path / "none")
    assert meter.choice["meters"] == ["nvml"]
    meter.start()
    fake.counters_mj = [40_000]
    reading = meter.stop()
    assert reading.joules == pytest.approx(40.0)
    assert reading.method == "counter"
    cpu = [c for c in reading.components if c.component == "cpu"]
    assert cpu and cpu[0].method == "unavailable" and cpu[0].joules is None
    assert "rapl: unavailable" in meter.probe()


def test_auto_combines_gpu_and_rapl(tmp_path):
    package = _rapl_domain(tmp_path, "intel-rapl:0", "package-0", 0, 10**12)
    fake = FakeNvml([0])
    meter = AutoMeter(nvml=fake, powercap_root=tmp_path)
    assert meter.choice["meters"] == ["nvml", "rapl"]
    meter.start()
    fake.counters_mj = [40_000]
    (package / "energy_uj").write_text("7000000\n")
    reading = meter.stop()
    assert reading.joules == pytest.approx(47.0) and reading.method == "counter"


def test_auto_uses_rapl_without_gpu(tmp_path):
    _rapl_domain(tmp_path, "intel-rapl:0", "package-0", 0, 10**12)
    meter = AutoMeter(nvml=FakeNvml([], fail_init=True), powercap_root=tmp_path)
    assert meter.choice["meters"] == ["rapl"]


def test_auto_falls_back_to_cpu_time_estimate(tmp_path):
    meter = AutoMeter(nvml=FakeNvml([], fail_init=True), powercap_root=tmp_path)
    assert meter.choice["meters"] == ["cpu-time"]
    with meter.measure() as box:
        sum(range(200_000))
    assert box.reading.method == "estimate"
    assert box.reading.raw["auto"]["meters"] == ["cpu-time"]


def test_auto_can_add_cpu_estimate_next_to_gpu(tmp_path):
    meter = AutoMeter(nvml=FakeNvml([0]), powercap_root=tmp_path, estimate_cpu_alongside_measured=True)
    assert meter.choice["meters"] == ["nvml", "cpu-time"]


def test_make_meter_names():
    assert isinstance(make_meter("cpu-time", watts_per_core=3.0), CpuTimeMeter)
    with pytest.raises(ValueError) as error:
        make_meter("joulescope")
    for name in METERS:
        assert name in str(error.value)


def test_measure_stops_meter_when_work_raises():
    meter = CpuTimeMeter()
    with pytest.raises(RuntimeError):
        with meter.measure() as box:
            raise RuntimeError("boom")
    assert box.reading is not None and box.reading.meter == "cpu-time"


# ---------------------------------------------------------------- cpu-time


def test_cpu_time_meter_is_cpu_seconds_times_watts():
    meter = CpuTimeMeter(watts_per_core=10.0, include_children=False)
    cpu0 = time.process_time()
    meter.start()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn 0.3 CPU-s whatever the machine's load
        pass
    reading = meter.stop()
    cpu_seconds = time.process_time() - cpu0
    assert cpu_seconds >= 0.3
    assert reading.joules == pytest.approx(10.0 * cpu_seconds, abs=10.0 * 0.01)
    assert reading.method == "estimate"


# ---------------------------------------------------------------- carbontracker / codecarbon


def test_remove_carbontracker_pue_hand_value():
    # 1 kWh reported with PUE 1.58 is 3.6 MJ / 1.58 of machine energy
    assert remove_carbontracker_pue(1.0, 1.58) == pytest.approx(3.6e6 / 1.58)
    assert remove_carbontracker_pue(1.58e-6, 1.58) == pytest.approx(3.6)


def test_carbontracker_simulated_cpu_pue_removed_and_own_pue_applied():
    # carbontracker's simulated CPU: 100 W TDP × 0.5 utilisation = 50 W, constant.
    meter = CarbonTrackerMeter(components="cpu", sim_cpu="Fake CPU", sim_cpu_tdp=100, sim_cpu_util=0.5, pue=1.2)
    assert "SimulatedCPUHandler" in meter.probe()
    meter.start()
    time.sleep(0.3)
    reading = meter.stop()
    epoch_seconds = reading.raw["epoch_seconds"]
    assert reading.components[0].joules == pytest.approx(50.0 * epoch_seconds, rel=1e-9)
    # carbontracker's own figure is kWh with its 1.58 PUE
    assert reading.raw["carbontracker_pue"] == pytest.approx(1.58)
    assert reading.raw["carbontracker_kwh"] == pytest.approx(50.0 * epoch_seconds * 1.58 / 3.6e6, rel=1e-9)
    assert reading.joules == pytest.approx(1.2 * 50.0 * epoch_seconds, rel=1e-9)
    assert reading.method == "estimate"
    assert meter.log  # its chatter was captured, not printed
    meter.close()


class CPU:  # named like codecarbon's hardware classes, which is what the mapping reads
    def __init__(self, mode):
        self._mode = mode


class RAM:
    pass


class GPU:
    pass


@pytest.mark.parametrize(
    ("hardware", "expected"),
    [
        (CPU("intel_rapl"), ("cpu", "counter")),
        (CPU("cpu_load"), ("cpu", "estimate")),
        (CPU("constant"), ("cpu", "estimate")),
        (CPU("intel_power_gadget"), ("cpu", "sampled-power")),
        (GPU(), ("gpu", "counter")),
        (RAM(), ("ram", "estimate")),
    ],
)
def test_codecarbon_method_labels(hardware, expected):
    assert codecarbon_method(hardware) == expected


# ---------------------------------------------------------------- plausibility


def _reading(joules, seconds=10.0, method="counter", meter="m"):
    return EnergyReading(meter, seconds, (ComponentEnergy("gpu", joules, method, "s"),))


def test_power_flags():
    assert power_flags(_reading(3000.0), max_watts=300, idle_watts=50) == []
    assert "above" in power_flags(_reading(5000.0), max_watts=300, idle_watts=50)[0]
    assert "below idle" in power_flags(_reading(100.0), max_watts=300, idle_watts=50)[0]
    assert power_flags(_reading(100.0), max_watts=None, idle_watts=None) == []
    none = EnergyReading("m", 1.0, (ComponentEnergy("gpu", None, "unavailable", "s"),))
    assert "no energy" in power_flags(none, max_watts=300, idle_watts=50)[0]


def test_mixed_methods_flag():
    assert mixed_methods_flag([_reading(1.0), _reading(2.0)]) is None
    flag = mixed_methods_flag([_reading(1.0), _reading(2.0, method="estimate")])
    assert flag is not None and "estimates mixed with measurements" in flag
    flag = mixed_methods_flag([_reading(1.0, meter="nvml"), _reading(2.0, meter="codecarbon")])
    assert flag is not None and "different meters" in flag


# ---------------------------------------------------------------- this machine


def test_auto_on_this_machine_measures_torch_workload_and_explains():
    direct = [NvmlMeter().available, not RaplMeter().probe().startswith("rapl: unavailable")]
    meter = make_meter("auto")
    a = torch.randn(128, 128)
    with meter.measure() as box:
        for _ in range(50):
            a = torch.tanh(a @ a)
    reading = box.reading
    assert reading.joules is not None and reading.joules > 0
    if not any(direct):  # this sandbox: no GPU, no readable RAPL
        assert reading.method == "estimate"
        assert "nvml: unavailable" in meter.probe() and "rapl: unavailable" in meter.probe()
    else:
        assert reading.method in ("counter", "sampled-power")
