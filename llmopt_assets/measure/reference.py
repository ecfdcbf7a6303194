"""The slow, obvious perplexity loop (the HF guide's) that the windowed evaluator is tested
against and the throughput benchmark compares with: kept in the package so benchmarks need no
import from the test package."""

import math

import torch


def reference_perplexity(model, ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """The HF perplexity guide's loop, with the scored-token count made exact: full logits,
    labels masked with -100 for the context part, the model's own loss. (perplexity, tokens)."""
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        trg_len = end - prev_end
        input_ids = ids[begin:end].unsqueeze(0)
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids, use_cache=False).loss
        # The model shifts labels by one: the first label of a window is never scored.
        scored = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * scored
        n_tokens += scored
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll_sum / n_tokens), n_tokens
