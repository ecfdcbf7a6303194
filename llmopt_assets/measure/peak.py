"""How close a run comes to the machine's matrix-multiply peak (issue 15).

The useful work of a decoder forward pass is counted as 2·params FLOPs per token (one multiply
and one add per weight; a tied output embedding counted once, since the lookup side costs no
FLOPs); attention scores, norms and activations are left out, so the ratio is a lower bound on
how busy the matmul units are. The peak is what ``torch.matmul`` of square matrices reaches on
the same threads, in the same process, in the same dtype: the best of several timed products, as
a machine's peak is its best sustained rate, not its average under load.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class MatmulPeak:
    dtype: str
    size: int
    threads: int
    gflops: float  # best of `repeats` products
    median_gflops: float
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


def matmul_peak(
    dtype: torch.dtype = torch.float32,
    size: int = 2048,
    repeats: int = 10,
    clock: Callable[[], float] = time.perf_counter,
) -> MatmulPeak:
    """GFLOP/s of ``size``×``size`` by ``size``×``size`` products (2·size³ FLOPs each)."""
    if size < 1 or repeats < 1:
        raise ValueError(f"size and repeats must be positive, got size={size}, repeats={repeats}")
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    torch.matmul(a, b)  # warm-up: thread pool, kernel selection
    rates = []
    for _ in range(repeats):
        started = clock()
        torch.matmul(a, b)
        elapsed = clock() - started
        rates.append(2 * size**3 / elapsed / 1e9)
    rates.sort()
    middle = len(rates) // 2
    median = rates[middle] if len(rates) % 2 else (rates[middle - 1] + rates[middle]) / 2
    return MatmulPeak(
        dtype=str(dtype).removeprefix("torch."),
        size=size,
        threads=torch.get_num_threads(),
        gflops=rates[-1],
        median_gflops=median,
        repeats=repeats,
    )


def model_gflops(parameters: int, tokens_per_second: float) -> float:
    """Useful GFLOP/s of a forward pass: 2·parameters·tokens/s."""
    return 2 * parameters * tokens_per_second / 1e9
