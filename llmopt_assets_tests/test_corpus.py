import pytest
import torch

from llmopt_assets.measure.corpus import (
    WIKITEXT2_RAW_TEST,
    calibration_windows,
    corpus_text,
    load_tokens,
    save_tokens,
    tokenize_stream,
)
from llmopt_assets_tests.tiny_models import tiny_tokenizer


def test_wikitext_rows_are_joined_like_the_hf_dataset() -> None:
    text = corpus_text(WIKITEXT2_RAW_TEST)
    rows = WIKITEXT2_RAW_TEST.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(rows) == 4358  # the canonical file's line count (data/ATTRIBUTION.md)
    assert text.startswith(rows[0] + "\n\n" + rows[1])
    assert len(text) == sum(len(r) for r in rows) + 2 * (len(rows) - 1)


def test_empty_corpus_is_refused(tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(ValueError, match="is empty"):
        corpus_text(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpus_text(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="empty corpus"):
        tokenize_stream(tiny_tokenizer(), "   ")


def test_calibration_windows_are_seeded_slices_of_the_stream() -> None:
    stream = torch.arange(1000)
    windows = calibration_windows(stream, 5, 16, seed=3)
    assert windows.shape == (5, 16)
    for row in windows:  # each is a contiguous slice
        assert torch.equal(row, torch.arange(int(row[0]), int(row[0]) + 16))
    assert torch.equal(windows, calibration_windows(stream, 5, 16, seed=3))
    with pytest.raises(ValueError, match="not enough"):
        calibration_windows(torch.arange(10), 2, 16)


def test_token_files_round_trip(tmp_path) -> None:
    stream = torch.randint(0, 100, (500,))
    save_tokens(tmp_path / "c.safetensors", stream, {"source": "test"})
    assert torch.equal(load_tokens(tmp_path / "c.safetensors"), stream)
    with pytest.raises(FileNotFoundError, match="materialize the corpus"):
        load_tokens(tmp_path / "nope.safetensors")
