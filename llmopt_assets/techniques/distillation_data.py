"""What a distilled student trains on: never the evaluation domain's held-apart split by default.

Training students on WikiText-2 valid, the domain of the WikiText-2 test evaluation, lets a
student beat its own teacher there (a tiny Llama teacher trained on another domain scored 99.3,
its 40-step student 64.8): the KD rows would measure domain adaptation, not compression. The
source is a recorded choice (the profile's `distillation_data`):

- `teacher-samples` (default, offline): text sampled from the teacher itself, seeded, at
  temperature 1: sequence-level KD (Kim & Rush 2016, listed in the paper's Table 2). The student
  learns the teacher's distribution and nothing of the evaluation text.
- `hf:<path>[:<config>]:<split>` (online): a `datasets` source, streamed, e.g.
  `hf:HuggingFaceFW/fineweb-edu:sample-10BT:train` or `hf:wikitext:wikitext-103-raw-v1:train`.
- `wikitext2-valid`: the evaluation domain's held-apart split, only when chosen on purpose.
"""

import hashlib
import math
import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmopt_assets.measure.corpus import WIKITEXT2_VALID, file_text, save_tokens, tokenize_stream
from llmopt_assets.models.architecture import cache_argument, context_length
from llmopt_assets.models.store import ModelStore
from llmopt_assets.profiles import EvaluationProfile
from llmopt_assets.techniques.distillation import PRESETS
from llmopt_assets.techniques.loading import load_variant

TEACHER_SAMPLES = "teacher-samples"
WIKITEXT2_VALID_SOURCE = "wikitext2-valid"
HUB_PREFIX = "hf:"
CORPUS = "distillation"  # the store's corpus name
SAMPLING_SEED = 0


@dataclass(frozen=True)
class DistillationSource:
    kind: str  # TEACHER_SAMPLES, WIKITEXT2_VALID_SOURCE or "hub"
    path: str | None = None  # hub only: dataset path, config name, split
    name: str | None = None
    split: str | None = None


def parse_source(spec: str) -> DistillationSource:
    """`teacher-samples`, `wikitext2-valid` or `hf:<path>[:<config>]:<split>`."""
    if spec in (TEACHER_SAMPLES, WIKITEXT2_VALID_SOURCE):
        return DistillationSource(spec)
    if spec.startswith(HUB_PREFIX):
        parts = spec[len(HUB_PREFIX) :].split(":")
        if len(parts) in (2, 3) and all(parts):
            path, *name, split = parts
            return DistillationSource("hub", path, name[0] if name else None, split)
    raise ValueError(
        f"unknown distillation data {spec!r}: use {TEACHER_SAMPLES!r} (offline, the default), "
        f"{WIKITEXT2_VALID_SOURCE!r} (the evaluation domain, on purpose only) or "
        "'hf:<path>[:<config>]:<split>' (a datasets source, streamed; needs network)"
    )


@torch.no_grad()
def sample_teacher_stream(
    teacher: PreTrainedModel,
    n_tokens: int,
    sequence_length: int,
    start_token_id: int,
    *,
    seed: int = 0,
    batch_size: int = 8,
    temperature: float = 1.0,
) -> torch.Tensor:
    """n_tokens of text sampled from the teacher (ancestral sampling, whole vocabulary), as one
    stream of sequences that each begin with `start_token_id` (a document boundary). Seeded: the
    same teacher, seed and arguments give the same tokens."""
    if n_tokens < 2 or sequence_length < 2:
        raise ValueError(f"need n_tokens >= 2 and sequence_length >= 2, got {n_tokens}, {sequence_length}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    generator = torch.Generator().manual_seed(seed)
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    sequences: list[torch.Tensor] = []
    produced = 0
    cache_key = cache_argument(teacher)
    try:
        while produced < n_tokens:
            ids = torch.full((batch_size, 1), start_token_id, dtype=torch.long, device=device)
            output = teacher(input_ids=ids, use_cache=True)
            for _ in range(sequence_length - 1):
                past = {cache_key: output.get(cache_key)}
                probabilities = torch.softmax(output.logits[:, -1].float().cpu() / temperature, dim=-1)
                sampled = torch.multinomial(probabilities, 1, generator=generator).to(device)
                ids = torch.cat([ids, sampled], dim=1)
                output = teacher(input_ids=sampled, use_cache=True, **past)
            sequences.extend(ids.cpu())
            produced += ids.numel()
    finally:
        teacher.train(was_training)
    return torch.cat(sequences)[:n_tokens].clone()


def hub_stream(tokenizer: PreTrainedTokenizerBase, source: DistillationSource, n_tokens: int) -> torch.Tensor:
    """The first n_tokens of a `datasets` source, streamed row by row (the `text` field),
    documents separated by the tokenizer's end-of-sequence token."""
    try:
        import datasets
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("a hub distillation source needs the `datasets` package") from error
    rows = datasets.load_dataset(source.path, source.name, split=source.split, streaming=True)
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for row in rows:
        text = row.get("text")
        if not text or not text.strip():
            continue
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"] + separator)
        if len(ids) >= n_tokens:
            return torch.tensor(ids[:n_tokens], dtype=torch.long)
    raise ValueError(f"{source.path} {source.split} holds only {len(ids)} tokens, {n_tokens} asked for")


def distillation_stream(
    source: DistillationSource,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    n_tokens: int,
    sequence_length: int,
    seed: int = 0,
) -> torch.Tensor:
    """The token stream a student trains on (validation slice included), from `source`."""
    if source.kind == TEACHER_SAMPLES:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ValueError("teacher sampling needs a BOS or EOS token to start each sequence")
        return sample_teacher_stream(teacher, n_tokens, sequence_length, start, seed=seed)
    if source.kind == WIKITEXT2_VALID_SOURCE:
        return tokenize_stream(tokenizer, file_text(WIKITEXT2_VALID))
    return hub_stream(tokenizer, source, n_tokens)


def split_validation(blocks: torch.Tensor, fraction: float, max_blocks: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) blocks: the last ceil(fraction · n) blocks (at most max_blocks, at
    least 1) are held out for early stopping; at least one block is left to train on."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    n = blocks.shape[0]
    if n < 2:
        raise ValueError(f"{n} block(s): too few to hold out a validation slice")
    held = min(max_blocks, max(1, math.ceil(fraction * n)), n - 1)
    return blocks[: n - held], blocks[n - held :]


def check_epochs(planned_tokens: int, corpus_tokens: int, max_epochs: float) -> float:
    """The epochs a run would make over its training corpus; refuses more than `max_epochs`
    (a student that sees the same text hundreds of times memorises it)."""
    epochs = planned_tokens / corpus_tokens
    if epochs > max_epochs:
        raise ValueError(
            f"distillation would read its {corpus_tokens:,}-token training corpus {epochs:.1f} times "
            f"({planned_tokens:,} planned tokens), more than max_epochs={max_epochs:g}: use a larger "
            "corpus (the profile's distillation_tokens, or a hub source), fewer steps, or raise max_epochs"
        )
    return epochs


def build_distillation_corpus(
    store: ModelStore, slug: str, profile: EvaluationProfile, device: str = "cpu"
) -> dict:
    """Make the model's distillation corpus (profile's source and size) and store its tokens."""
    source = parse_source(profile.distillation_data)
    teacher, tokenizer = load_variant(store, store.manifest(slug, "base"), device=device)
    sequence_length = min(PRESETS[profile.distillation].block_length, context_length(teacher))
    started = time.perf_counter()
    stream = distillation_stream(
        source, teacher, tokenizer, profile.distillation_tokens, sequence_length, seed=SAMPLING_SEED
    )
    seconds = time.perf_counter() - started
    digest = hashlib.sha256(stream.numpy().tobytes()).hexdigest()
    path = store.corpus_path(slug, CORPUS)
    save_tokens(path, stream, {"source": profile.distillation_data, "seed": str(SAMPLING_SEED), "tokens_sha256": digest})
    return {
        "tokens": len(stream), "source": profile.distillation_data, "seed": SAMPLING_SEED,
        "seconds": seconds, "path": str(path), "tokens_sha256": digest,
    }
