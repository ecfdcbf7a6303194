"""SparseGPT 2:4 on SmolLM2-135M at its default calibration: wall time, CPU time and peak RSS of
the pruning, and perplexity against magnitude 2:4 and the base (issue 3's targets: within 10
minutes on 2 cores, peak RSS under 4 GB, clearly better than magnitude).

    .venv/bin/python benchmarks/sparsegpt_cost.py [--samples 32] [--length 512] [--windows 8]
"""

import argparse
import copy
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmopt_assets.measure.corpus import (  # noqa: E402
    WIKITEXT2_RAW_TEST,
    WIKITEXT2_VALID,
    calibration_windows,
    corpus_text,
    file_text,
    tokenize_stream,
)
from llmopt_assets.measure.hardware import peak_rss_mb  # noqa: E402
from llmopt_assets.measure.perplexity import PerplexityProtocol, evaluate_perplexity  # noqa: E402
from llmopt_assets.models.registry import load_registry  # noqa: E402
from llmopt_assets.models.sources import load_source  # noqa: E402
from llmopt_assets.techniques.sparsegpt import DEFAULT_CALIBRATION, magnitude_prune, sparsegpt_prune  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=DEFAULT_CALIBRATION["n_samples"])
    parser.add_argument("--length", type=int, default=DEFAULT_CALIBRATION["seqlen"])
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args()
    model, tokenizer = load_source(load_registry()["smollm2-135m"])
    test_ids = tokenize_stream(tokenizer, corpus_text(WIKITEXT2_RAW_TEST))
    calibration = calibration_windows(
        tokenize_stream(tokenizer, file_text(WIKITEXT2_VALID)), args.samples, args.length, seed=0
    )
    protocol = PerplexityProtocol("wikitext-2-raw-v1/test", "\n\n", 512, 512, "float32", max_tokens=512 * args.windows)
    magnitude = copy.deepcopy(model)
    base_ppl = evaluate_perplexity(model, test_ids, protocol).perplexity
    magnitude_prune(magnitude, prune_n=2, prune_m=4)
    magnitude_ppl = evaluate_perplexity(magnitude, test_ids, protocol).perplexity
    del magnitude
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    report = sparsegpt_prune(model, calibration, prune_n=2, prune_m=4)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    sparse_ppl = evaluate_perplexity(model, test_ids, protocol).perplexity
    print(f"calibration {args.samples} x {args.length} tokens of the WikiText-2 valid split (seed 0)")
    print(f"SparseGPT 2:4: {wall:.0f} s wall, {cpu:.0f} s CPU, overall sparsity {report.overall_sparsity:.3f}, "
          f"n:m violations {report.nm_violations}")
    print(f"peak RSS of the whole process (model copies included): {peak_rss_mb():.0f} MB  (target < 4096)")
    print(f"perplexity on {args.windows} x 512 test tokens: base {base_ppl:.2f}, magnitude-2:4 {magnitude_ppl:.1f}, "
          f"sparsegpt-2:4 {sparse_ppl:.2f}")


if __name__ == "__main__":
    main()
