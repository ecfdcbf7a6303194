"""Which device a step runs on, how many steps each device pool admits, and whether a model fits
the memory a step may use — decided before any weights are loaded."""

from __future__ import annotations

from dataclasses import dataclass

# Steps that build variants (pruning, SparseGPT: the paper ran it on the CPU) share the `cpu` pool;
# steps that run the model for long (measurement, distillation) share the `gpu` pool.
CPU_POOL = "cpu"
GPU_POOL = "gpu"

ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Every variant is loaded in the compute dtype before bitsandbytes quantizes it in memory
# (store.load), so the peak is the full-precision weights whatever the technique. On top of the
# weights: activations, the logits of one window, allocator slack. 1.25 is our named allowance,
# not a measurement; a budget that is too tight by less than that is refused conservatively.
LOAD_OVERHEAD = 1.25


class MemoryBudgetError(RuntimeError):
    """The step's model would not fit the memory budget: refused before loading anything."""


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cpu", "cuda", "cuda:1"
    fallback: str | None  # why a requested GPU was not used; None when the request was honoured

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def choose_device(requested: str, cuda_devices: int) -> DeviceChoice:
    """'auto' = the first CUDA device when there is one, else the CPU. A CUDA device asked for on a
    machine without one (a CPU-only Celery worker, CI) falls back to the CPU and says why."""
    if requested == "auto":
        return DeviceChoice("cuda" if cuda_devices else "cpu", None)
    if requested == "cpu":
        return DeviceChoice("cpu", None)
    if not requested.startswith("cuda"):
        raise ValueError(f"compute device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {requested!r}")
    index = int(requested.split(":", 1)[1]) if ":" in requested else 0
    if cuda_devices == 0:
        return DeviceChoice("cpu", f"{requested} requested but this machine has no CUDA device: running on the CPU")
    if index >= cuda_devices:
        raise ValueError(f"compute device {requested!r} requested but only {cuda_devices} CUDA device(s) are visible")
    return DeviceChoice(requested, None)


def pool_limits(cuda_devices: int) -> dict[str, int]:
    """Concurrent steps per pool: one CPU step at a time (measurements must not share the cores),
    one step per GPU. With no GPU the `gpu` pool's steps run on the CPU, so they too get 1 slot."""
    return {CPU_POOL: 1, GPU_POOL: max(cuda_devices, 1)}


def pool_for(kind: str, cuda_devices: int) -> str:
    """The concurrency pool of a step that wants `kind` hardware. On a machine without CUDA a GPU
    step runs on the CPU, so it joins the `cpu` pool: it must not be timed while another step
    shares the cores."""
    if kind not in (CPU_POOL, GPU_POOL):
        raise ValueError(f"step kind must be {CPU_POOL!r} or {GPU_POOL!r}, got {kind!r}")
    return GPU_POOL if kind == GPU_POOL and cuda_devices else CPU_POOL


def estimate_load_bytes(parameter_count: int, dtype: str) -> int:
    """Peak memory to load and run a model of `parameter_count` parameters in `dtype`."""
    if parameter_count <= 0:
        raise ValueError(f"parameter count must be positive, got {parameter_count}")
    if dtype not in ELEMENT_BYTES:
        raise ValueError(f"dtype must be one of {sorted(ELEMENT_BYTES)}, got {dtype!r}")
    return int(parameter_count * ELEMENT_BYTES[dtype] * LOAD_OVERHEAD)


def check_memory_budget(parameter_count: int, dtype: str, budget_bytes: int, where: str) -> int:
    """The estimated peak in bytes, or MemoryBudgetError when it exceeds `budget_bytes`."""
    needed = estimate_load_bytes(parameter_count, dtype)
    if needed > budget_bytes:
        raise MemoryBudgetError(
            f"{where}: {parameter_count:,} parameters in {dtype} need about {needed / 2**30:.2f} GiB "
            f"(weights × {LOAD_OVERHEAD} allowance) but the memory budget is {budget_bytes / 2**30:.2f} GiB; "
            "raise memory_budget_gb, use bfloat16, or run the step on a larger device"
        )
    return needed
