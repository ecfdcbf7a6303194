"""Head pruning under both criteria on one model: heads removed and perplexity for ah90 / ah80.

`single-key-share` (the paper's §3.1 read literally, the default) against `per-query-max` (our
first reading), on the profile's head calibration (WikiText-2 valid windows, seed 0), each
pruned model evaluated on the first --tokens tokens of the evaluation text (fp32, windows of
--max-length; the whole test split with --tokens 0).

    .venv/bin/python benchmarks/head_criteria.py [--model smollm2-135m] [--profile smoke] [--tokens 4096]
"""

import argparse
import copy
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
from llmopt_assets.measure.perplexity import PerplexityProtocol, evaluate_perplexity  # noqa: E402
from llmopt_assets.models.registry import load_registry  # noqa: E402
from llmopt_assets.models.sources import load_source  # noqa: E402
from llmopt_assets.profiles import get_profile  # noqa: E402
from llmopt_assets.techniques import head_pruning  # noqa: E402
from llmopt_assets.techniques.variants import CALIBRATION_SEED  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--profile", default="smoke", help="whose head calibration to use")
    parser.add_argument("--tokens", type=int, default=4096, help="evaluation tokens (0: the whole test split)")
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args()
    profile = get_profile(args.profile)
    model, tokenizer = load_source(load_registry()[args.model])
    model.eval()
    calibration = calibration_windows(
        tokenize_stream(tokenizer, file_text(WIKITEXT2_VALID)),
        profile.head_calibration_samples, profile.head_calibration_length, seed=CALIBRATION_SEED,
    )
    test_ids = tokenize_stream(tokenizer, corpus_text(WIKITEXT2_RAW_TEST))
    max_length = min(args.max_length, args.tokens) if args.tokens else args.max_length
    protocol = PerplexityProtocol(
        "wikitext-2-raw-v1/test", "\n\n", max_length, max_length, "float32", max_tokens=args.tokens or None
    )
    base = evaluate_perplexity(model, test_ids, protocol)
    total_heads = sum(head_pruning.heads_per_layer(model))
    print(f"{args.model}, {args.profile} head calibration ({profile.head_calibration_samples} x "
          f"{profile.head_calibration_length}), perplexity on {base.scored_tokens} tokens "
          f"(windows of {max_length}, fp32); {total_heads} heads")
    print(f"base perplexity {base.perplexity:.4f}")
    print(f"{'criterion':18s} {'threshold':>9s} {'removed':>8s} {'perplexity':>11s}  heads removed per layer")
    for criterion in head_pruning.CRITERIA:
        started = time.perf_counter()
        concentration = head_pruning.head_attention_concentration(model, calibration, criterion=criterion)
        seconds = time.perf_counter() - started
        for key, threshold in head_pruning.PAPER_THRESHOLDS.items():
            heads = head_pruning.select_heads_to_prune(concentration, threshold)
            pruned = copy.deepcopy(model)
            head_pruning.remove_heads(pruned, heads)
            result = evaluate_perplexity(pruned, test_ids, protocol)
            removed = sum(len(v) for v in heads.values())
            per_layer = {layer: len(v) for layer, v in sorted(heads.items())}
            print(f"{criterion:18s} {key:>9s} {removed:8d} {result.perplexity:11.4f}  {per_layer}")
            del pruned
        print(f"  ({criterion}: concentration measured in {seconds:.0f} s; max {float(concentration.max()):.3f}, "
              f"heads > 0.5: {int((concentration > 0.5).sum())})")


if __name__ == "__main__":
    main()
