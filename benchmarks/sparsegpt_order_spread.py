"""SparseGPT 2:4 on SmolLM2-135M: how much the perplexity moves when only the order of the
calibration windows changes (issue 10's parity question).

The reference implementation (IST-DASLab/sparsegpt, non-true-sequential) and ours gave 57.35 and
58.74 on the same calibration. Both sum the same H = 2/n Σ xxᵀ, which in exact arithmetic does not
depend on the order of the windows; in fp32 it does, by rounding. 2:4 masks choose the 2 lowest
saliencies w²/[H⁻¹]²_jj of every 4 weights, and SmolLM2's de-quantized Q4_1 weights hold few
distinct values, so near-ties are common: a rounding-sized change flips a few masks in block 0,
each flip moves the OBS update of its row, the next block's inputs move, and by block 29 ~8% of
the masks differ. This script measures that spread for our implementation: the calibration of
the reference's WikiText-2 loader (valid.txt tokenized as one stream, `random.seed(seed)`,
windows starting at `random.randint(0, N − seqlen − 1)`), pruned once per order (order 0 = as
drawn, order k = a permutation seeded k), each scored on the first `--tokens` of the test rows at
2048/2048 in fp32.

    .venv/bin/python benchmarks/sparsegpt_order_spread.py [--orders 0 1 2 3] [--tokens 16384]
"""

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmopt_assets.measure.corpus import (  # noqa: E402
    WIKITEXT2_RAW_TEST,
    WIKITEXT2_VALID,
    corpus_text,
    file_text,
    tokenize_stream,
)
from llmopt_assets.measure.perplexity import PerplexityProtocol, evaluate_perplexity  # noqa: E402
from llmopt_assets.models.registry import load_registry  # noqa: E402
from llmopt_assets.models.sources import load_source  # noqa: E402
from llmopt_assets.techniques.sparsegpt import sparsegpt_prune  # noqa: E402


def reference_calibration(stream: torch.Tensor, n_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """The windows the reference's WikiText-2 loader draws: Python's `random`, seeded, one start
    per window in [0, N − seqlen − 1]."""
    random.seed(seed)
    starts = [random.randint(0, len(stream) - seqlen - 1) for _ in range(n_samples)]
    return torch.stack([stream[start : start + seqlen] for start in starts])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=16384)
    args = parser.parse_args()
    base, tokenizer = load_source(load_registry()["smollm2-135m"])
    calibration = reference_calibration(
        tokenize_stream(tokenizer, file_text(WIKITEXT2_VALID)), args.samples, args.length, args.seed
    )
    test_ids = tokenize_stream(tokenizer, corpus_text(WIKITEXT2_RAW_TEST))
    protocol = PerplexityProtocol("wikitext-2-raw-v1/test", "\n\n", 2048, 2048, "float32", max_tokens=args.tokens)
    dense = evaluate_perplexity(base, test_ids, protocol).perplexity
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; dense perplexity {dense:.4f} "
          f"({args.tokens} test tokens, 2048/2048 fp32)", flush=True)
    state = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    results: dict[int, float] = {}
    for order in args.orders:
        base.load_state_dict(state)
        rows = torch.arange(len(calibration))
        if order:
            rows = torch.randperm(len(calibration), generator=torch.Generator().manual_seed(order))
        started = time.perf_counter()
        sparsegpt_prune(base, calibration[rows], prune_n=2, prune_m=4)
        pruned_seconds = time.perf_counter() - started
        results[order] = evaluate_perplexity(base, test_ids, protocol).perplexity
        print(f"order {order}: perplexity {results[order]:.3f} (pruned in {pruned_seconds:.0f} s)", flush=True)
    values = list(results.values())
    if len(values) > 1:
        mean, sd = statistics.mean(values), statistics.stdev(values)
        print(f"\n2:4 perplexity over {len(values)} calibration orders: mean {mean:.3f}, sd {sd:.3f} "
              f"({sd / mean:.1%}), range {min(values):.3f}-{max(values):.3f}")


if __name__ == "__main__":
    main()
