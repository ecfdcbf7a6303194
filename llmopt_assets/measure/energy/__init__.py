"""Energy meters: every reading says per component how it was measured (or that it was not)."""

from .auto import METERS, AutoMeter, CompositeMeter, make_meter
from .base import ComponentEnergy, EnergyMeter, EnergyReading, Method, weakest_method
from .carbontracker_meter import CarbonTrackerMeter, remove_carbontracker_pue
from .codecarbon_meter import CodeCarbonMeter
from .cpu_time import DEFAULT_WATTS_PER_CORE, CpuTimeMeter, process_cpu_seconds
from .nvml import NvmlMeter
from .plausibility import mixed_methods_flag, power_flags
from .rapl import RaplMeter, counter_delta

__all__ = [
    "METERS",
    "AutoMeter",
    "CarbonTrackerMeter",
    "CodeCarbonMeter",
    "ComponentEnergy",
    "CompositeMeter",
    "CpuTimeMeter",
    "DEFAULT_WATTS_PER_CORE",
    "EnergyMeter",
    "EnergyReading",
    "Method",
    "NvmlMeter",
    "RaplMeter",
    "counter_delta",
    "make_meter",
    "mixed_methods_flag",
    "power_flags",
    "process_cpu_seconds",
    "remove_carbontracker_pue",
    "weakest_method",
]
