"""NVIDIA GPU energy through NVML (the nvidia-ml-py package, module ``pynvml``).

Volta and newer expose ``nvmlDeviceGetTotalEnergyConsumption``: millijoules since the driver
loaded, a real counter (method "counter"). Older GPUs only report instantaneous power
(``nvmlDeviceGetPowerUsage``, mW); we then sample it on a background thread and integrate
with the trapezoid rule (method "sampled-power"). Note the power reading on many boards is
itself a ~1 s moving average, so sampled power smooths short bursts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from .base import ComponentEnergy, EnergyMeter, EnergyReading, unavailable


def load_nvml() -> ModuleType:
    import pynvml  # nvidia-ml-py; imported lazily so machines without it still import us

    return pynvml


def trapezoid_joules(samples: Sequence[tuple[float, float]]) -> float:
    """Integrate (seconds, watts) samples, sorted by time, with the trapezoid rule."""
    return sum(
        (t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(samples, samples[1:])
    )


class _PowerSampler:
    """Polls instantaneous power of some GPUs; one sample list per GPU."""

    def __init__(self, read_watts: list[Any], interval_s: float, clock: Callable[[], float] = time.perf_counter):
        self.read_watts = read_watts
        self.interval_s = interval_s
        self.clock = clock
        self.samples: list[list[tuple[float, float]]] = [[] for _ in read_watts]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nvml-power", daemon=True)

    def sample(self) -> None:
        for samples, read in zip(self.samples, self.read_watts):
            samples.append((self.clock(), read()))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> None:
        self.sample()  # a sample at the very start, so integration covers the whole span
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # and one at the very end


class NvmlMeter(EnergyMeter):
    """Energy of all GPUs (or ``device_indices``): counter where supported, else sampled power.

    ``nvml`` may be given a module with pynvml's functions (tests pass a fake), ``clock`` the
    function that stamps the power samples and the span.
    """

    name = "nvml"

    def __init__(
        self,
        device_indices: Sequence[int] | None = None,
        sample_interval_s: float = 0.05,
        nvml: ModuleType | Any | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.clock = clock
        self.device_indices = list(device_indices) if device_indices is not None else None
        self.sample_interval_s = sample_interval_s
        self._nvml = nvml
        self._initialised = False
        self._nvml_started = False
        self._why_unavailable: str | None = None
        self._devices: list[tuple[int, Any, str, bool]] = []  # index, handle, name, has counter
        self._counter_start: dict[int, int] = {}
        self._sampler: _PowerSampler | None = None
        self._t0 = 0.0

    def _init(self) -> None:
        if self._initialised:
            return
        self._initialised = True
        try:
            nvml = self._nvml if self._nvml is not None else load_nvml()
            self._nvml = nvml
            nvml.nvmlInit()
            self._nvml_started = True
        except Exception as error:  # ImportError, NVMLError_LibraryNotFound, driver missing
            self._why_unavailable = f"NVML not usable ({type(error).__name__}: {error})"
            return
        try:
            count = nvml.nvmlDeviceGetCount()
            indices = self.device_indices if self.device_indices is not None else range(count)
            for index in indices:
                if not 0 <= index < count:
                    raise ValueError(f"GPU index {index} out of range (found {count})")
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
                try:
                    nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                    has_counter = True
                except nvml.NVMLError:  # pre-Volta: NVML_ERROR_NOT_SUPPORTED
                    has_counter = False
                self._devices.append((index, handle, name, has_counter))
        except Exception as error:
            self._why_unavailable = f"NVML device query failed ({type(error).__name__}: {error})"
            self._devices = []
            return
        if not self._devices:
            self._why_unavailable = "NVML found no GPU"

    def probe(self) -> str:
        self._init()
        if not self._devices:
            return f"nvml: unavailable: {self._why_unavailable}."
        parts = [
            f"GPU {i} {name}: {'energy counter' if counter else 'sampled power (no energy counter before Volta)'}"
            for i, _, name, counter in self._devices
        ]
        return "nvml: " + "; ".join(parts) + "."

    @property
    def available(self) -> bool:
        self._init()
        return bool(self._devices)

    def start(self) -> None:
        self._init()
        nvml = self._nvml
        sampled = [(i, h) for i, h, _, counter in self._devices if not counter]
        self._sampler = None
        if sampled:
            readers = [lambda h=h: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0 for _, h in sampled]
            self._sampler = _PowerSampler(readers, self.sample_interval_s, self.clock)
        self._t0 = self.clock()
        self._counter_start = {
            i: nvml.nvmlDeviceGetTotalEnergyConsumption(h)
            for i, h, _, counter in self._devices
            if counter
        }
        if self._sampler is not None:
            self._sampler.start()

    def stop(self) -> EnergyReading:
        counter_end = {
            i: self._nvml.nvmlDeviceGetTotalEnergyConsumption(h)
            for i, h, _, counter in self._devices
            if counter
        }
        if self._sampler is not None:
            self._sampler.stop()
        seconds = self.clock() - self._t0
        if not self._devices:
            why = self._why_unavailable or "no GPU"
            return EnergyReading(self.name, seconds, (unavailable("gpu", "nvml", why),))
        components: list[ComponentEnergy] = []
        raw: dict[str, Any] = {"counter_mj": {}, "power_samples": {}}
        sampled_order = [i for i, _, _, counter in self._devices if not counter]
        for index, _, name, counter in self._devices:
            source = f"nvml:{index} {name}"
            if counter:
                millijoules = counter_end[index] - self._counter_start[index]
                raw["counter_mj"][str(index)] = millijoules
                components.append(ComponentEnergy("gpu", millijoules / 1000.0, "counter", source))
            else:
                assert self._sampler is not None
                samples = self._sampler.samples[sampled_order.index(index)]
                raw["power_samples"][str(index)] = len(samples)
                components.append(
                    ComponentEnergy(
                        "gpu",
                        trapezoid_joules(samples),
                        "sampled-power",
                        source,
                        f"{len(samples)} power samples every {self.sample_interval_s} s",
                    )
                )
        return EnergyReading(self.name, seconds, tuple(components), raw=raw)

    def close(self) -> None:
        if self._nvml_started:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
        self._initialised = False
        self._nvml_started = False
        self._devices = []
