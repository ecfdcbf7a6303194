"""Shared-context scoring for lm-eval's loglikelihood requests: an item's context (its few-shot
examples and question) runs through the model once, and every answer choice is scored from its
KV cache.

A multiple-choice item asks for log P(choice | context) of each of its 2 to 13 choices; lm-eval's
HFLM runs the whole context again for each one. With a 25-shot ARC context of ~1,000 tokens and
4 one-to-ten-token choices that is ~4,000 tokens through the model where ~1,040 suffice.

Semantics kept from HFLM._loglikelihood_tokens (lm-eval 0.4): the log-probability of each
continuation token given everything before it, summed, and is_greedy = every continuation token
is the argmax at its position. Requests HFLM would truncate on the left (context + continuation
longer than max_length + 1) and requests whose context no other request shares go to the plain
path unchanged.
"""

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from llmopt_assets.models import architecture

# (request strings or None, context tokens, continuation tokens), as lm-eval hands them over.
Request = tuple[object, list[int], list[int]]


@dataclass(frozen=True)
class SharedContexts:
    """Request indices by shared context (two or more continuations each) and the rest."""

    groups: dict[tuple[int, ...], list[int]]
    plain: list[int]


def group_by_context(requests: Sequence[Request], max_length: int) -> SharedContexts:
    """Requests whose context tokens are identical, where at least two share one and none would be
    truncated; every other request (a lone context, a truncated one, an empty side) is plain."""
    by_context: dict[tuple[int, ...], list[int]] = {}
    plain: list[int] = []
    for index, (_, context, continuation) in enumerate(requests):
        if not context or not continuation or len(context) + len(continuation) > max_length + 1:
            plain.append(index)
        else:
            by_context.setdefault(tuple(context), []).append(index)
    groups = {}
    for context, indices in by_context.items():
        if len(indices) >= 2:
            groups[context] = indices
        else:
            plain.extend(indices)
    return SharedContexts(groups=groups, plain=sorted(plain))


def score_from_shared_context(
    model: PreTrainedModel,
    context: Sequence[int],
    continuations: Sequence[Sequence[int]],
    *,
    batch_size: int,
    softmax_dtype: torch.dtype | None = None,
    on_forward: Callable[[int], None] | None = None,
) -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) of each continuation after `context`, the context run once.

    The context's last position predicts every continuation's first token. The rest of each
    continuation (all but its last token, as HFLM feeds them) runs in batches of `batch_size` on
    a copy of the context's KV cache repeated per row, right-padded, with positions continuing the
    context's, so each real token sees exactly the context and its own preceding tokens.
    `on_forward(tokens)` counts the tokens each forward pass carries."""
    device = model.device
    context_ids = torch.tensor([list(context)], dtype=torch.long, device=device)
    # Only the context's last position is scored: its logits alone where the model can skip the
    # rest (the LM head over ~1,000 positions × the vocabulary is ~20% of SmolLM2's forward pass).
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    out = model(input_ids=context_ids, use_cache=True, **last_only)
    if on_forward is not None:
        on_forward(context_ids.numel())
    cache_argument = architecture.cache_argument(model)
    cache = out.get(cache_argument)
    if cache is None:
        raise RuntimeError(f"{type(model).__name__} returned no KV cache")
    first = F.log_softmax(out.logits[0, -1], dim=-1, dtype=softmax_dtype)  # predicts token 0
    first_greedy = int(first.argmax())
    results: list[tuple[float, bool]] = [
        (float(first[c[0]]), first_greedy == c[0]) for c in continuations
    ]
    # Only continuations longer than one token need a second pass.
    longer = [i for i, c in enumerate(continuations) if len(c) > 1]
    starts = range(0, len(longer), max(1, batch_size))
    for chunk_start in starts:
        chunk = longer[chunk_start : chunk_start + batch_size]
        # The last chunk may consume the cache; the others work on a copy (forward appends to it).
        last = chunk_start + batch_size >= len(longer)
        chunk_cache = cache if last else copy.deepcopy(cache)
        chunk_cache.batch_repeat_interleave(len(chunk))
        tails = [list(continuations[i][:-1]) for i in chunk]
        width = max(len(t) for t in tails)
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
        attention = torch.zeros((len(chunk), len(context) + width), dtype=torch.long, device=device)
        attention[:, : len(context)] = 1
        for row, tail in enumerate(tails):
            input_ids[row, : len(tail)] = torch.tensor(tail, dtype=torch.long, device=device)
            attention[row, len(context) : len(context) + len(tail)] = 1
        positions = torch.arange(len(context), len(context) + width, device=device).expand(len(chunk), -1)
        logits = model(
            input_ids=input_ids, attention_mask=attention, position_ids=positions,
            use_cache=True, **{cache_argument: chunk_cache},
        ).logits
        if on_forward is not None:
            on_forward(input_ids.numel())
        logprobs = F.log_softmax(logits, dim=-1, dtype=softmax_dtype)
        for row, i in enumerate(chunk):
            rest = torch.tensor(continuations[i][1:], dtype=torch.long, device=device)
            scored = logprobs[row, : len(rest)]
            loglikelihood = results[i][0] + float(scored.gather(1, rest.unsqueeze(1)).sum())
            greedy = results[i][1] and bool((scored.argmax(dim=-1) == rest).all())
            results[i] = (loglikelihood, greedy)
    return results
