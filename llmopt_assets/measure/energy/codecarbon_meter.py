"""codecarbon's energy for one measurement, offline.

One ``OfflineEmissionsTracker`` per meter (country code given, so no geolocation request;
``save_to_file=False``; no API), and one codecarbon *task* (``start_task``/``stop_task``) per
measurement: the task delta is codecarbon's own per-component energy for that span. Its
hardware detection (~1.5 s) is paid once, at the first ``probe()``/``start()``.

How codecarbon gets each component decides our method label: CPU by RAPL (counter), Intel
Power Gadget (sampled power) or, as on a machine without RAPL, a CPU-load model: TDP ×
utilisation (estimate); NVIDIA GPUs from NVML's energy counter (counter); RAM always from a
model of installed memory (estimate). codecarbon's own PUE is left at 1.0; ours is applied by
``EnergyReading``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from typing import Any

from .base import ComponentEnergy, EnergyMeter, EnergyReading, Method, unavailable

KWH_TO_JOULES = 3.6e6

_CPU_MODE_METHOD: dict[str, Method] = {
    "intel_rapl": "counter",
    "windows_emi": "counter",
    "intel_power_gadget": "sampled-power",
    "cpu_load": "estimate",
    "constant": "estimate",
}


def codecarbon_method(hardware: Any) -> tuple[str, Method]:
    """(component, method) for one codecarbon hardware object."""
    kind = type(hardware).__name__
    if kind == "CPU":
        return "cpu", _CPU_MODE_METHOD.get(getattr(hardware, "_mode", ""), "estimate")
    if kind == "GPU":
        return "gpu", "counter"
    if kind == "RAM":
        return "ram", "estimate"
    if kind == "AppleSiliconChip":
        return getattr(hardware, "chip_part", "cpu").lower(), "sampled-power"
    return kind.lower(), "estimate"


class CodeCarbonMeter(EnergyMeter):
    """``tracking_mode``: codecarbon's "machine" (its default: whole machine) or "process"."""

    name = "codecarbon"

    def __init__(
        self,
        country_iso_code: str = "USA",
        tracking_mode: str = "machine",
        measure_power_secs: float = 1.0,
        pue: float = 1.0,
        gpu_ids: list[int] | None = None,
    ):
        self.country_iso_code = country_iso_code
        self.tracking_mode = tracking_mode
        self.measure_power_secs = measure_power_secs
        self.pue = pue
        self.gpu_ids = gpu_ids
        self.log: list[str] = []
        self._tracker: Any = None
        self._why_unavailable: str | None = None
        self._t0 = 0.0
        self._task = 0
        self.setup_seconds: float | None = None

    def _setup(self) -> None:
        if self._tracker is not None or self._why_unavailable is not None:
            return
        t0 = time.perf_counter()
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                from codecarbon import OfflineEmissionsTracker

                # Its import sets the "codecarbon" logger to INFO, which prints at every
                # start; keep errors only.
                logging.getLogger("codecarbon").setLevel(logging.ERROR)

                options: dict[str, Any] = dict(
                    country_iso_code=self.country_iso_code,
                    tracking_mode=self.tracking_mode,
                    measure_power_secs=self.measure_power_secs,
                    save_to_file=False,
                    save_to_api=False,
                    save_to_logger=False,
                    allow_multiple_runs=True,  # no lock file shared with other processes
                    log_level="error",
                    pue=1.0,
                )
                if self.gpu_ids is not None:
                    options["gpu_ids"] = self.gpu_ids
                tracker = OfflineEmissionsTracker(**options)
                # The first task detects hardware (slow); do it now, not inside a measurement.
                tracker.start_task("llmopt-setup")
                tracker.stop_task()
            self._tracker = tracker
        except Exception as error:
            self._why_unavailable = f"codecarbon setup failed ({type(error).__name__}: {error})"
        finally:
            self.log.extend(line for line in captured.getvalue().splitlines() if line)
        self.setup_seconds = time.perf_counter() - t0

    def _hardware(self) -> list[Any]:
        return list(getattr(self._tracker, "_hardware", []) or [])

    def probe(self) -> str:
        self._setup()
        if self._tracker is None:
            return f"codecarbon: unavailable: {self._why_unavailable}."
        parts = []
        for hardware in self._hardware():
            component, method = codecarbon_method(hardware)
            parts.append(f"{component} via {hardware.description()}: method {method}")
        return (
            f"codecarbon ({self.tracking_mode} mode, offline, {self.country_iso_code}): "
            + "; ".join(parts) + "."
        )

    def start(self) -> None:
        self._setup()
        self._task += 1
        self._t0 = time.perf_counter()
        if self._tracker is not None:
            self._tracker.start_task(f"llmopt-{self._task}")

    def stop(self) -> EnergyReading:
        data = self._tracker.stop_task() if self._tracker is not None else None
        seconds = time.perf_counter() - self._t0
        if data is None:
            why = self._why_unavailable or "codecarbon returned no task data"
            return EnergyReading(self.name, seconds, (unavailable("cpu", "codecarbon", why),), self.pue)
        kwh_by_component = {"cpu": data.cpu_energy, "gpu": data.gpu_energy, "ram": data.ram_energy}
        watts_by_component = {"cpu": data.cpu_power, "gpu": data.gpu_power, "ram": data.ram_power}
        components = []
        for hardware in self._hardware():
            component, method = codecarbon_method(hardware)
            kwh = kwh_by_component.get(component)
            source = f"codecarbon:{hardware.description()}"
            if kwh is None:
                components.append(unavailable(component, source, "codecarbon reported no energy"))
                continue
            components.append(ComponentEnergy(
                component, float(kwh) * KWH_TO_JOULES, method, source,
                f"codecarbon {self.tracking_mode} mode, {watts_by_component.get(component, 0):.2f} W"))
        raw = {
            "tracking_mode": data.tracking_mode,
            "duration": data.duration,
            "cpu_energy_kwh": data.cpu_energy,
            "gpu_energy_kwh": data.gpu_energy,
            "ram_energy_kwh": data.ram_energy,
            "energy_consumed_kwh": data.energy_consumed,
            "cpu_power_w": data.cpu_power,
            "gpu_power_w": data.gpu_power,
            "ram_power_w": data.ram_power,
            "cpu_model": data.cpu_model,
            "gpu_model": data.gpu_model,
            "codecarbon_pue": data.pue,
        }
        return EnergyReading(self.name, seconds, tuple(components), self.pue, raw)

    def close(self) -> None:
        if self._tracker is not None:
            with contextlib.suppress(Exception):
                self._tracker.stop()
        self._tracker = None
