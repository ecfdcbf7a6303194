"""The paper's meter, carbontracker (Anthony et al., 2020), driven one measurement at a time.

We run carbontracker's own measuring parts, its components (GPU via NVML power, CPU via RAPL,
else a TDP table guess) and its ``CarbonTrackerThread`` sampling loop, and read its own
``total_energy_per_epoch()``: one measurement is one carbontracker "epoch". We do not use the
``CarbonTracker`` front end, because its constructor geolocates the machine over the network
(``geocoder.ip("me")``, then a carbon-intensity API) and calls ``sys.exit`` on errors; energy
needs none of that, and no carbon intensity is looked up at all.

Units and PUE: carbontracker reports kWh already multiplied by its PUE (1.58, the 2023 Uptime
Institute survey). We keep that figure in ``raw`` and store each component's energy without
it, in joules; our own ``pue`` (1.0 by default) is applied by ``EnergyReading.joules``.

Caveats seen on a machine without RAPL or GPU: the CPU falls back to ``GenericCPU``, a
constant power of half the mean TDP of carbontracker's CPU table (about 35.6 W) for any
model it does not recognise, times wall time, whatever the load: method "estimate".
A measurement shorter than carbontracker's first sample gets no power at all; carbontracker
would report 0 (or re-use the previous epoch's energy), we report "unavailable".
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from typing import Any

from .base import ComponentEnergy, EnergyMeter, EnergyReading, Method, unavailable

KWH_TO_JOULES = 3.6e6

# How each carbontracker handler gets power: RAPL and NVML are read as average power over a
# sampling window, then carbontracker multiplies the mean power by the epoch time.
_HANDLER_METHOD: dict[str, Method] = {
    "IntelCPU": "sampled-power",
    "NvidiaGPU": "sampled-power",
    "AppleSiliconCPU": "sampled-power",
    "AppleSiliconGPU": "sampled-power",
    "GenericCPU": "estimate",
    "SimulatedCPUHandler": "estimate",
    "SimulatedGPUHandler": "estimate",
}


def remove_carbontracker_pue(kwh_with_pue: float, carbontracker_pue: float) -> float:
    """Joules of the machine itself from a carbontracker figure (kWh × its PUE)."""
    return kwh_with_pue / carbontracker_pue * KWH_TO_JOULES


class _LogCollector(logging.Handler):
    """Keeps carbontracker's console messages instead of printing them."""

    def __init__(self, sink: list[str]):
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


def _silence(logger_wrapper: Any, sink: list[str]) -> None:
    for lg in (logger_wrapper.logger_err, logger_wrapper.logger_output):
        lg.handlers = [_LogCollector(sink)]


class CarbonTrackerMeter(EnergyMeter):
    """carbontracker's energy for one measurement, its PUE removed.

    ``components``: "all", "cpu", "gpu" or "gpu,cpu" as in carbontracker.
    ``update_interval_s``: carbontracker's sampling period (its default is 1 s).
    ``sim_*``: carbontracker's simulated CPU/GPU (fixed TDP × utilisation), for tests or for a
    known chip it does not recognise.
    """

    name = "carbontracker"

    def __init__(
        self,
        components: str = "all",
        update_interval_s: float = 1.0,
        pue: float = 1.0,
        sim_cpu: str | None = None,
        sim_cpu_tdp: float | None = None,
        sim_cpu_util: float | None = None,
        sim_gpu: str | None = None,
        sim_gpu_watts: float | None = None,
        sim_gpu_util: float | None = None,
    ):
        self.components_spec = components
        self.update_interval_s = update_interval_s
        self.pue = pue
        self._sim = dict(
            sim_cpu=sim_cpu,
            sim_cpu_tdp=sim_cpu_tdp,
            sim_cpu_util=sim_cpu_util,
            sim_gpu=sim_gpu,
            sim_gpu_watts=sim_gpu_watts,
            sim_gpu_util=sim_gpu_util,
        )
        self.log: list[str] = []  # carbontracker's messages, quieted
        self._components: list[Any] | None = None
        self._why_unavailable: str | None = None
        self._thread: Any = None
        self._errors: list[str] = []
        self._t0 = 0.0
        self.setup_seconds: float | None = None

    def _setup(self) -> None:
        """Import carbontracker and build its components once (cpuinfo alone takes ~1 s)."""
        if self._components is not None or self._why_unavailable is not None:
            return
        t0 = time.perf_counter()
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                from carbontracker import loggerutil
                from carbontracker.components import component as ct_component
                from carbontracker.components.cpu import generic as ct_generic

                _silence(ct_generic.logger, self.log)  # module-level logger prints at import
                self._logger = loggerutil.Logger(verbose=0, logger_id=f"llmopt{id(self)}")
                _silence(self._logger, self.log)
                components = ct_component.create_components(
                    components=self.components_spec,
                    pids=[os.getpid()],
                    devices_by_pid=False,
                    logger=self._logger,
                    **self._sim,
                )
                components = [c for c in components if c.available()]
                for comp in components:
                    comp.init()
        except Exception as error:
            self._why_unavailable = f"carbontracker setup failed ({type(error).__name__}: {error})"
            components = []
        finally:
            self.log.extend(line for line in captured.getvalue().splitlines() if line)
        if not components and self._why_unavailable is None:
            self._why_unavailable = f"carbontracker found no {self.components_spec} component"
        self._components = components
        self.setup_seconds = time.perf_counter() - t0

    @staticmethod
    def _method(comp: Any) -> Method:
        return _HANDLER_METHOD.get(type(comp.handler).__name__, "estimate")

    def probe(self) -> str:
        self._setup()
        if not self._components:
            return f"carbontracker: unavailable: {self._why_unavailable}."
        parts = []
        for comp in self._components:
            handler = comp.handler
            kind = type(handler).__name__
            detail = ""
            if kind == "GenericCPU":
                detail = f" (no RAPL: constant {handler.tdp:.1f} W = half a TDP-table value, times wall time)"
            parts.append(f"{comp.name} via {kind}{detail}: method {self._method(comp)}")
        return (
            "carbontracker: " + "; ".join(parts)
            + f"; its PUE {self._carbontracker_pue()} is removed, ours is {self.pue}."
        )

    @staticmethod
    def _carbontracker_pue() -> float:
        from carbontracker import constants

        return float(constants.PUE_2023)

    def _new_thread(self) -> Any:
        from carbontracker.tracker import CarbonTrackerThread

        class _OneEpochThread(CarbonTrackerThread):
            # Components are initialised once by the meter and reused, so the thread neither
            # re-initialises them at start nor shuts them down at its end.
            def begin(self) -> None:
                pass

            def _components_shutdown(self) -> None:
                pass

        for comp in self._components or []:
            comp.power_usages = []
            comp.cur_epoch = -1
        return _OneEpochThread(
            components=list(self._components or []),
            logger=self._logger,
            ignore_errors=True,  # otherwise carbontracker calls os._exit(70) on a sampling error
            delete=lambda: self._errors.append("carbontracker stopped monitoring after an error"),
            update_interval=self.update_interval_s,
        )

    def start(self) -> None:
        self._setup()
        self._errors = []
        self._thread = self._new_thread() if self._components else None
        self._t0 = time.perf_counter()
        if self._thread is not None:
            self._thread.epoch_start()

    def stop(self) -> EnergyReading:
        thread = self._thread
        if thread is not None:
            thread.epoch_end()
        seconds = time.perf_counter() - self._t0
        if thread is None:
            why = self._why_unavailable or "not set up"
            return EnergyReading(self.name, seconds, (unavailable("cpu", "carbontracker", why),), self.pue)
        thread.stop()  # joins: an in-flight sample (RAPL: 1 s) finishes first
        self._thread = None
        ct_pue = self._carbontracker_pue()
        kwh_with_pue = float(thread.total_energy_per_epoch()[0])
        epoch_seconds = float(thread.epoch_times[0])
        components = []
        per_component_kwh: dict[str, float] = {}
        for comp in thread.components:
            kind = type(comp.handler).__name__
            source = f"carbontracker:{comp.name}:{kind}"
            samples = [w for epoch in comp.power_usages for w in epoch]
            if not samples:
                components.append(unavailable(comp.name, source, (
                    f"no power sample within {epoch_seconds:.3f} s (carbontracker samples every "
                    f"{self.update_interval_s} s; it would have reported 0)")))
                continue
            if not any(_flat_sum(w) for w in samples):
                components.append(unavailable(comp.name, source, (
                    "carbontracker recorded only zero power (its placeholder after a read error)")))
                continue
            kwh = float(comp.energy_usage(thread.epoch_times)[0])
            per_component_kwh[comp.name] = kwh
            components.append(ComponentEnergy(
                comp.name, kwh * KWH_TO_JOULES, self._method(comp), source,
                f"{len(samples)} power sample(s), mean × {epoch_seconds:.3f} s"))
        raw = {
            "carbontracker_kwh": kwh_with_pue,  # as carbontracker reports it, PUE included
            "carbontracker_pue": ct_pue,
            "kwh_without_pue": remove_carbontracker_pue(kwh_with_pue, ct_pue) / KWH_TO_JOULES,
            "component_kwh": per_component_kwh,
            "epoch_seconds": epoch_seconds,
            "errors": list(self._errors),
        }
        return EnergyReading(self.name, seconds, tuple(components), self.pue, raw)

    def close(self) -> None:
        for comp in self._components or []:
            with contextlib.suppress(Exception):
                comp.shutdown()
        self._components = None


def _flat_sum(sample: Any) -> float:
    if isinstance(sample, (list, tuple)):
        return sum(_flat_sum(s) for s in sample)
    return float(sample)
