"""Full-test perplexity of a registry model on the evaluation text (issue 10 target).

The SmolLM2-135M base at fp32, non-overlapping windows of 2048 (the partial last window
included) must score 21.6504 on the HF `wikitext-2-raw-v1` test rows joined with "\\n\\n"
(304,986 tokens, 149 windows, 304,837 scored); the file's raw lines (" \\n" spacer rows kept)
gave 21.6404 on 306,303 scored.

    .venv/bin/python benchmarks/eval_text.py [--model smollm2-135m] [--max-length 2048]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmopt_assets.measure.corpus import WIKITEXT2_RAW_TEST, corpus_text, tokenize_stream  # noqa: E402
from llmopt_assets.measure.perplexity import PerplexityProtocol, evaluate_perplexity  # noqa: E402
from llmopt_assets.models.registry import load_registry  # noqa: E402
from llmopt_assets.models.sources import load_source  # noqa: E402

TARGET_SMOLLM2 = 21.6504


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args()
    model, tokenizer = load_source(load_registry()[args.model])
    model.eval()
    ids = tokenize_stream(tokenizer, corpus_text(WIKITEXT2_RAW_TEST))
    protocol = PerplexityProtocol("wikitext-2-raw-v1/test", "\n\n", args.max_length, args.max_length, "float32")
    result = evaluate_perplexity(model, ids, protocol)
    print(f"model={args.model} tokens={len(ids)} windows={result.windows} scored={result.scored_tokens}")
    print(f"perplexity={result.perplexity:.6f} nll_sum={result.nll_sum:.6f} seconds={result.seconds:.0f}")
    if args.model == "smollm2-135m" and args.max_length == 2048:
        relative = abs(result.perplexity - TARGET_SMOLLM2) / TARGET_SMOLLM2
        print(f"target {TARGET_SMOLLM2}: relative difference {relative:.2e} ({'met' if relative <= 1e-4 else 'MISSED'})")


if __name__ == "__main__":
    main()
