"""Token-level perplexity over a corpus in windows: the HF "perplexity of fixed-length models"
guide's loop.

The corpus is one token stream. Window k covers tokens [k·stride, k·stride + max_length) and
scores the tokens the previous window did not reach, each predicted from the context inside its
own window. A window's first token has no context in it and is not scored, so non-overlapping
windows (stride == max_length) score max_length − 1 tokens each, exactly as the HF guide's loop
does, and the partial last window is scored too. (GPTQ / SparseGPT's evaluation differs: it
drops the partial last window and divides by max_length per window instead of max_length − 1.) Perplexity = exp(Σ NLL / scored tokens), accumulated in fp64 from
fp32 log-probabilities whatever the compute dtype.

Speed and memory: the language-model head is applied in chunks, and only to positions that are
scored, so a window never materialises its full [length, vocab] logits (SmolLM2's 49k vocabulary
at 2048 tokens would be 400 MB in fp32). Windows of equal length run through the backbone
together, up to ``BATCH_TOKENS`` tokens a batch (2048 in fp32, 4096 in bf16, as measured):
short windows then make matrix products tall enough to keep the CPU's matmul units busy; at
2048 tokens one window already is. The attention is whatever the model was loaded with (the
store loads SDPA). ``compile=True`` runs the backbone through ``torch.compile`` (inductor; off by
default: it compiles for a minute or more before the first window, which pays only on long
evaluations).
"""

import math
import time
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel

# Bump with any change to the perplexity evaluator (every perplexity_run):
# Dagster then marks what it made stale.
CODE_VERSION = "2"  # 2: lm_head and loss in chunks of 128 tokens (same numbers, different time)

# Logits of one chunk: 128 x vocab fp32 (25 MB for SmolLM2). Against chunks of 1024 on the
# 2-core VM (SmolLM2-135M, one 2048-token window, 6 ABBA pairs, every pair faster): the window
# took 0.953x the time in fp32 and 0.833x in bf16: the log-sum-exp reads logits that are still
# in cache, and 128-row products of the head ran no slower. fp32 sums are bit-identical.
HEAD_CHUNK_TOKENS = 128
# Tokens through the backbone at once, by the compute dtype's width. On the 2-core VM (SmolLM2-135M,
# windows of 512/1024/2048, 3 interleaved rounds) fp32 ran fastest at 1024-2048 and lost 3-11% at
# 4096 (two 2048 windows' activations no longer stay in cache); bf16 gained 6-30% from 4096.
BATCH_TOKENS = {4: 2048, 2: 4096}  # element size in bytes -> tokens


def default_batch_tokens(dtype: torch.dtype) -> int:
    """Tokens per backbone call for a model computing in dtype (wider than 4 bytes: as fp32)."""
    return BATCH_TOKENS[2] if dtype.itemsize <= 2 else BATCH_TOKENS[4]


@dataclass(frozen=True)
class PerplexityProtocol:
    """Everything that changes a perplexity number; stored with every result."""

    dataset: str
    joiner: str
    max_length: int
    stride: int
    dtype: str
    max_tokens: int | None = None  # token budget (smoke profile); None = the whole corpus

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 tokens, got {self.max_length}")
        if not 1 <= self.stride <= self.max_length:
            raise ValueError(
                f"stride must be in [1, max_length={self.max_length}], got {self.stride}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.max_tokens is not None and self.max_tokens < self.max_length:
            raise ValueError(
                f"token budget max_tokens={self.max_tokens} is smaller than one window "
                f"(max_length={self.max_length}): no complete window can be scored"
            )

    def to_dict(self) -> dict:
        return asdict(self)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll_sum: float
    scored_tokens: int
    windows: int
    seconds: float

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.scored_tokens

    @property
    def tokens_per_second(self) -> float:
        return self.scored_tokens / self.seconds if self.seconds > 0 else math.nan


@dataclass(frozen=True)
class Window:
    begin: int
    end: int
    scored_from: int  # first position (absolute) whose token is scored


def windows(n_tokens: int, max_length: int, stride: int) -> list[Window]:
    """The evaluation windows of a stream of n_tokens; no token is scored twice."""
    if n_tokens < 2:
        raise ValueError(f"the corpus has {n_tokens} token(s): at least 2 are needed")
    result = []
    scored_until = 1  # token 0 has no context
    begin = 0
    while scored_until < n_tokens:
        end = min(begin + max_length, n_tokens)
        result.append(Window(begin, end, max(scored_until, begin + 1)))
        scored_until = end
        begin += stride
    return result


def budget_tokens(n_tokens: int, protocol: PerplexityProtocol) -> int:
    """How much of the stream the protocol evaluates (the token budget, if any)."""
    if protocol.max_tokens is None:
        return n_tokens
    return min(n_tokens, protocol.max_tokens)


@torch.inference_mode()
def window_nll(model: PreTrainedModel, input_ids: torch.Tensor, n_scored: int) -> torch.Tensor:
    """Summed NLL (fp64 scalar) of the last n_scored tokens of input_ids ([1, length])."""
    return batch_nll(model.base_model, model.get_output_embeddings(), input_ids, [n_scored])


@torch.inference_mode()
def batch_nll(
    backbone: torch.nn.Module, head: torch.nn.Module, input_ids: torch.Tensor, n_scored: list[int]
) -> torch.Tensor:
    """Summed NLL (fp64 scalar) of the last n_scored[i] tokens of each row of input_ids
    ([batch, length], windows of equal length)."""
    hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state
    length = input_ids.shape[1]
    # Position t predicts token t+1: the scored tokens are predicted by the preceding positions.
    predicting = torch.cat([hidden[row, length - n - 1 : length - 1] for row, n in enumerate(n_scored)])
    targets = torch.cat([input_ids[row, length - n :] for row, n in enumerate(n_scored)])
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, len(targets), HEAD_CHUNK_TOKENS):
        stop = min(start + HEAD_CHUNK_TOKENS, len(targets))
        logits = head(predicting[start:stop]).float()  # a no-op in fp32; bf16 sums in fp32
        # −log softmax(logits)[target] = logsumexp(logits) − logits[target]: no [chunk, vocab]
        # log-probability tensor is written, which F.cross_entropy would allocate and fill.
        target_logits = logits.gather(1, targets[start:stop, None]).squeeze(1)
        total += (torch.logsumexp(logits, dim=1) - target_logits).sum(dtype=torch.float64)
    return total


def window_batches(spans: list[Window], batch_tokens: int) -> list[list[Window]]:
    """Consecutive windows of equal length, grouped up to batch_tokens tokens (at least one each)."""
    batches: list[list[Window]] = []
    for window in spans:
        length = window.end - window.begin
        current = batches[-1] if batches else None
        if (
            current is not None
            and current[0].end - current[0].begin == length
            and (len(current) + 1) * length <= batch_tokens
        ):
            current.append(window)
        else:
            batches.append([window])
    return batches


def evaluate_perplexity(
    model: PreTrainedModel,
    token_ids: torch.Tensor,
    protocol: PerplexityProtocol,
    *,
    batch_tokens: int | None = None,
    compile: bool = False,
) -> PerplexityResult:
    """Perplexity of model on a 1-D token stream under protocol.

    The model must already be in the protocol's compute dtype (see `load` in the model store);
    loss is accumulated in fp32/fp64 regardless. ``batch_tokens`` and ``compile`` change the
    speed, not the number (equal to 1e-5 relative in fp32, tested against the HF-guide loop);
    ``batch_tokens`` None takes the default for the model's dtype (``default_batch_tokens``).
    """
    if token_ids.ndim != 1:
        raise ValueError(f"token_ids must be a 1-D token stream, got shape {tuple(token_ids.shape)}")
    if batch_tokens is None:
        # the activations' dtype is the embedding's (quantized layers keep theirs fp32 or bf16)
        batch_tokens = default_batch_tokens(model.get_input_embeddings().weight.dtype)
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be at least 1, got {batch_tokens}")
    n_tokens = budget_tokens(len(token_ids), protocol)
    if n_tokens < protocol.max_length and protocol.max_tokens is not None:
        raise ValueError(
            f"the corpus has {len(token_ids)} tokens, fewer than one window of "
            f"{protocol.max_length}: lower max_length or use a larger corpus"
        )
    device = next(model.parameters()).device
    model.eval()
    backbone = model.base_model
    if compile:
        backbone = torch.compile(backbone, dynamic=False)
    head = model.get_output_embeddings()
    started = time.perf_counter()
    nll_sum = 0.0
    scored = 0
    spans = windows(n_tokens, protocol.max_length, protocol.stride)
    for batch in window_batches(spans, batch_tokens):
        input_ids = torch.stack([token_ids[w.begin : w.end] for w in batch]).to(device)
        n_scored = [w.end - w.scored_from for w in batch]
        nll = float(batch_nll(backbone, head, input_ids, n_scored))
        if not math.isfinite(nll):
            raise FloatingPointError(
                f"non-finite loss ({nll}) in windows [{batch[0].begin}, {batch[-1].end}): "
                "the model produces NaN/inf logits"
            )
        nll_sum += nll
        scored += sum(n_scored)
    seconds = time.perf_counter() - started
    return PerplexityResult(
        perplexity=math.exp(nll_sum / scored),
        nll_sum=nll_sum,
        scored_tokens=scored,
        windows=len(spans),
        seconds=seconds,
    )
