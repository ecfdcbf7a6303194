"""What machine and software a measurement ran on: stored with every result row.

Cheap (no torch/transformers import: versions come from package metadata) and cached once
per process; callers get a copy.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import platform
from importlib import metadata
from typing import Any

_PACKAGES = ("torch", "transformers", "bitsandbytes", "accelerate", "dagster", "carbontracker",
             "codecarbon", "nvidia-ml-py", "numpy", "scipy")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> dict[str, Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as error:
        return {"gpus": [], "gpu_driver": None, "gpu_note": f"NVML unavailable: {type(error).__name__}"}
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append({
                "index": index,
                "name": name.decode() if isinstance(name, bytes) else name,
                "memory_bytes": int(memory.total),
            })
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        return {"gpus": gpus, "gpu_driver": driver}
    finally:
        pynvml.nvmlShutdown()


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


@functools.lru_cache(maxsize=1)
def _hardware_info() -> dict[str, Any]:
    import psutil

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable,
        "ram_bytes": int(psutil.virtual_memory().total),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": _versions(),
    }
    info.update(_gpus())
    return info


def hardware_info() -> dict[str, Any]:
    """CPU, cores, RAM, GPUs and driver (via NVML), OS and library versions."""
    return copy.deepcopy(_hardware_info())


def hardware_fingerprint(info: dict[str, Any] | None = None) -> str:
    """A short stable hash of the hardware (not the software): groups comparable results."""
    info = info if info is not None else hardware_info()
    keys = ("cpu_model", "logical_cores", "physical_cores", "ram_bytes", "gpus")
    text = json.dumps({k: info.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def peak_rss_mb() -> float:
    """Peak resident memory of this process's address space (VmHWM), in MB. Not ru_maxrss:
    Linux carries that over execve, so a child of a big parent would report the parent's peak."""
    try:
        for line in open("/proc/self/status").read().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
