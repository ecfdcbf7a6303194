"""CPU package and DRAM energy from Intel/AMD RAPL counters via Linux powercap.

Each domain directory ``/sys/class/powercap/intel-rapl:<pkg>[:<sub>]`` holds ``name``
("package-0", "dram", "core", "uncore", "psys"), ``energy_uj`` (a cumulative counter in µJ)
and ``max_energy_range_uj`` (where the counter wraps to 0). We read package and dram only:
core and uncore are parts of the package and would be counted twice.

Since the 2020 "Platypus" side channel, ``energy_uj`` is readable by root only on most
distributions; then this meter reports "unavailable" and says so.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .base import ComponentEnergy, EnergyMeter, EnergyReading, unavailable

DEFAULT_POWERCAP_ROOT = Path("/sys/class/powercap")
_DOMAIN_DIR = re.compile(r"^intel-rapl:\d+(:\d+)?$")


def counter_delta(before_uj: int, after_uj: int, max_energy_range_uj: int) -> int:
    """Energy between two counter reads, allowing for one wrap-around.

    The counter runs from 0 to ``max_energy_range_uj`` and restarts at 0; a read that went
    down means it wrapped once (the kernel's own convention, as in perf and turbostat).
    Two wraps between reads cannot be told apart, so long measurements are polled.
    """
    delta = after_uj - before_uj
    if delta < 0:
        delta += max_energy_range_uj
    return delta


@dataclass(frozen=True)
class RaplDomain:
    path: Path
    name: str  # "package-0", "dram"
    max_energy_range_uj: int

    @property
    def component(self) -> str:
        return "ram" if self.name == "dram" else "package"

    def read_uj(self) -> int:
        return int((self.path / "energy_uj").read_text().strip())


def find_domains(root: Path = DEFAULT_POWERCAP_ROOT) -> list[RaplDomain]:
    """Package and dram domains under a powercap root (empty when there is none)."""
    if not root.is_dir():
        return []
    domains = []
    for path in sorted(root.iterdir()):
        if not _DOMAIN_DIR.match(path.name):
            continue
        try:
            name = (path / "name").read_text().strip()
            max_range = int((path / "max_energy_range_uj").read_text().strip())
        except (OSError, ValueError):
            continue
        if name.startswith("package") or name == "dram":
            domains.append(RaplDomain(path, name, max_range))
    return domains


class RaplMeter(EnergyMeter):
    """RAPL package and DRAM counters; method "counter".

    A background thread reads the counters every ``poll_interval_s`` so that a measurement
    longer than one wrap period (max_energy_range_uj / power: ~20 min at 200 W) stays right.
    """

    name = "rapl"

    def __init__(self, root: str | Path = DEFAULT_POWERCAP_ROOT, poll_interval_s: float = 10.0):
        self.root = Path(root)
        self.poll_interval_s = poll_interval_s
        self._domains: list[RaplDomain] = []
        self._last: list[int] = []
        self._total_uj: list[int] = []
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._poller: threading.Thread | None = None
        self._t0 = 0.0
        self._why_unavailable: str | None = None

    def _readable_domains(self) -> tuple[list[RaplDomain], str | None]:
        domains = find_domains(self.root)
        if not domains:
            return [], f"no RAPL package/dram domains under {self.root}"
        try:
            for domain in domains:
                domain.read_uj()
        except PermissionError:
            return [], (
                f"{domains[0].path}/energy_uj is not readable (root only since the 2020 "
                "Platypus mitigation; grant read access to use RAPL)"
            )
        except (OSError, ValueError) as error:
            return [], f"RAPL counters unreadable: {error}"
        return domains, None

    def probe(self) -> str:
        domains, why = self._readable_domains()
        if why:
            return f"rapl: unavailable: {why}."
        names = ", ".join(f"{d.path.name} ({d.name})" for d in domains)
        return f"rapl: energy counters readable for {names}: method counter."

    def _poll_once(self) -> None:
        with self._lock:
            for i, domain in enumerate(self._domains):
                now = domain.read_uj()
                self._total_uj[i] += counter_delta(self._last[i], now, domain.max_energy_range_uj)
                self._last[i] = now

    def _poll_loop(self) -> None:
        while not self._stop_event.wait(self.poll_interval_s):
            try:
                self._poll_once()
            except (OSError, ValueError):
                pass  # a failed read only delays accumulation to the next poll or stop()

    def start(self) -> None:
        self._domains, self._why_unavailable = self._readable_domains()
        self._last = [d.read_uj() for d in self._domains]
        self._total_uj = [0] * len(self._domains)
        self._t0 = time.perf_counter()
        if self._domains and self.poll_interval_s > 0:
            self._stop_event.clear()
            self._poller = threading.Thread(target=self._poll_loop, name="rapl-poll", daemon=True)
            self._poller.start()

    def stop(self) -> EnergyReading:
        if self._domains:
            self._poll_once()
        seconds = time.perf_counter() - self._t0
        if self._poller is not None:
            self._stop_event.set()
            self._poller.join()
            self._poller = None
        if not self._domains:
            why = self._why_unavailable or "no domains"
            return EnergyReading(self.name, seconds, (unavailable("cpu", "rapl", why),))
        components = tuple(
            ComponentEnergy(d.component, uj / 1e6, "counter", f"rapl:{d.path.name} ({d.name})")
            for d, uj in zip(self._domains, self._total_uj)
        )
        raw = {"energy_uj": {d.path.name: uj for d, uj in zip(self._domains, self._total_uj)}}
        return EnergyReading(self.name, seconds, components, raw=raw)
