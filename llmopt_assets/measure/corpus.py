"""Evaluation and calibration text: the files shipped in data/, tokenized per model."""

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from llmopt_assets.paths import DATA_DIR


# Bump with any change to how text is read and tokenized (eval_corpus, calibration_corpus):
# Dagster then marks what it made stale.
CODE_VERSION = "1"

# WikiText-2 raw test, the canonical file; `hf_rows` turns its lines into the HF dataset's rows.
WIKITEXT2_RAW_TEST = DATA_DIR / "wikitext-2-raw" / "wiki.test.raw"
# The tokenized WikiText-2 valid split: held apart for calibration and distillation, never
# evaluated on.
WIKITEXT2_VALID = DATA_DIR / "wikitext-2" / "valid.txt"

CORPORA = {"wikitext2": WIKITEXT2_RAW_TEST}
EVAL_JOINER = "\n\n"
# A corpus shorter than one full perplexity window of the paper's protocol (2048 tokens) is a
# mistake (a truncated or wrong file: WikiText-2 test and valid are ~250k tokens each), and one
# that would replace the good corpus and then fail every measurement: refused before writing.
MIN_CORPUS_TOKENS = 2048


def hf_rows(path: Path) -> list[str]:
    """The rows of a WikiText file exactly as the HF `wikitext-*-raw-v1` splits hold them.

    The HF builder reads the file line by line (text mode, so only "\\n" ends a row and each
    row keeps it) and stores a whitespace-only line as the empty string "": the file's " \\n"
    spacer lines become "". (`str.splitlines` would also split on \\x0b, \\x1c, U+2028, ...)
    """
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    try:
        with path.open(encoding="utf-8") as lines:
            return [line if line.strip() else "" for line in lines]
    except UnicodeDecodeError as error:
        raise ValueError(f"corpus file {path} is not UTF-8 text: {error}") from error


def corpus_text(path: Path, joiner: str = EVAL_JOINER) -> str:
    """The HF rows of a text file joined with `joiner` ("\\n\\n": the HF perplexity guide's
    `"\\n\\n".join(test["text"])`, which is what the paper's evaluation tokenizes)."""
    text = joiner.join(hf_rows(path))
    if not text.strip():
        raise ValueError(f"corpus {path} is empty: no text to evaluate on")
    return text


def file_text(path: Path) -> str:
    """A file's text as one stream, byte for byte (the calibration text: SparseGPT's reference
    tokenizes its calibration split this way)."""
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"corpus file {path} is not UTF-8 text: {error}") from error
    if not text.strip():
        raise ValueError(f"corpus {path} is empty: no text to calibrate on")
    return text


def tokenize_stream(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """One 1-D token stream for the whole text (no truncation, no special tokens added)."""
    if not text.strip():
        raise ValueError("cannot tokenize an empty corpus")
    # The stream is longer than the model's context on purpose: perplexity slides windows over it.
    saved_max = tokenizer.model_max_length
    tokenizer.model_max_length = int(1e12)
    try:
        ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    finally:
        tokenizer.model_max_length = saved_max
    stream = torch.tensor(ids, dtype=torch.long)
    if len(stream) < 2:
        raise ValueError(f"the corpus tokenizes to {len(stream)} token(s): at least 2 are needed")
    return stream


def check_corpus_size(stream: torch.Tensor, source: Path, minimum: int = MIN_CORPUS_TOKENS) -> None:
    """Refuse a corpus too short to measure on, before it replaces the stored one."""
    if len(stream) < minimum:
        raise ValueError(
            f"corpus {source} tokenizes to {len(stream)} tokens, fewer than {minimum} (one full "
            "perplexity window): refused, the stored corpus is left as it was"
        )


def calibration_windows(
    stream: torch.Tensor, n_samples: int, length: int, seed: int = 0
) -> torch.Tensor:
    """n_samples random windows of `length` tokens from a stream ([n_samples, length]), seeded."""
    if len(stream) <= length:
        raise ValueError(
            f"calibration text has {len(stream)} tokens, not enough for windows of {length}"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - length, (n_samples,), generator=generator)
    return torch.stack([stream[s : s + length] for s in starts.tolist()])


def save_tokens(path: Path, stream: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write a token stream as safetensors, atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    save_file({"input_ids": stream.contiguous()}, str(staging), metadata=metadata)
    staging.replace(path)


def load_tokens(path: Path) -> torch.Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"token file {path} does not exist: materialize the corpus asset first")
    try:
        return load_file(str(path))["input_ids"]
    except (SafetensorError, OSError, KeyError) as error:
        raise ValueError(
            f"token file {path} is unreadable ({error!r}): rematerialize the corpus asset"
        ) from error

