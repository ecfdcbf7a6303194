"""Flags for energy numbers that cannot be right, or cannot be compared."""

from __future__ import annotations

from collections.abc import Iterable

from .base import EnergyReading


def power_flags(
    reading: EnergyReading,
    *,
    max_watts: float | None,
    idle_watts: float | None,
    margin: float = 1.5,
) -> list[str]:
    """Reasons to distrust a reading's average power (energy / time); empty when plausible.

    ``max_watts``: the hardware's TDP (sum over measured devices); above ``max_watts × margin``
    the meter or the time is wrong. ``idle_watts``: what the hardware draws doing nothing;
    a reading below ``idle_watts / margin`` missed energy (e.g. a counter that did not
    advance, a sample that came too late). Either bound may be None (unknown).
    """
    flags: list[str] = []
    if reading.joules is None:
        flags.append(f"{reading.meter}: no energy measured (all components unavailable)")
        return flags
    watts = reading.average_watts
    if watts is None:
        flags.append(f"{reading.meter}: no duration, average power undefined")
        return flags
    if watts < 0:
        flags.append(f"{reading.meter}: negative energy ({reading.joules:.3g} J)")
    if max_watts is not None and watts > max_watts * margin:
        flags.append(
            f"{reading.meter}: average {watts:.1f} W is above {margin} × max {max_watts:.1f} W"
        )
    if idle_watts is not None and watts < idle_watts / margin:
        flags.append(
            f"{reading.meter}: average {watts:.1f} W is below idle {idle_watts:.1f} W / {margin}"
        )
    return flags


def mixed_methods_flag(readings: Iterable[EnergyReading]) -> str | None:
    """A warning when readings to be compared (e.g. variant vs base) were obtained differently.

    An estimate compared with a measurement, or two different meters, makes a ratio mean
    little; the flag names what was mixed. None when all share one method and one meter.
    """
    readings = list(readings)
    methods = sorted({r.method for r in readings})
    meters = sorted({r.meter for r in readings})
    problems = []
    if "unavailable" in methods:
        problems.append("some readings measured nothing")
    measured = [m for m in methods if m != "unavailable"]
    if "estimate" in measured and len(measured) > 1:
        problems.append(f"estimates mixed with measurements ({', '.join(measured)})")
    elif len(measured) > 1:
        problems.append(f"different measurement methods ({', '.join(measured)})")
    if len(meters) > 1:
        problems.append(f"different meters ({', '.join(meters)})")
    return "; ".join(problems) if problems else None
