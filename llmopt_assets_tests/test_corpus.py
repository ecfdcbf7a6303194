import pytest
import torch

from llmopt_assets.measure.corpus import (
    WIKITEXT2_RAW_TEST,
    calibration_windows,
    corpus_text,
    file_text,
    hf_rows,
    load_tokens,
    save_tokens,
    tokenize_stream,
)
from llmopt_assets_tests.tiny_models import tiny_tokenizer


def test_wikitext_rows_are_the_hf_split_rows() -> None:
    rows = hf_rows(WIKITEXT2_RAW_TEST)
    # The first rows of datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test"),
    # written out by hand: the file's " \n" spacer lines are empty strings there.
    assert rows[:3] == ["", " = Robert Boulter = \n", ""]
    assert rows[3].startswith(" Robert Boulter is an English film , television and theatre actor .")
    assert rows[3].endswith("Dominic Hall . \n")
    assert len(rows) == 4358  # the split's row count (data/ATTRIBUTION.md)
    assert sum(1 for row in rows if row == "") == 1467  # the whitespace-only lines


def test_eval_text_is_the_hf_guide_join(tmp_path) -> None:
    source = tmp_path / "wiki.raw"
    # a spacer line, a heading, a vertical tab inside a line (not a row break for the HF
    # builder), a line of spaces, and a last line without a newline
    source.write_text(" \n = A = \n x \x0b y \n   \n last", encoding="utf-8")
    expected_rows = ["", " = A = \n", " x \x0b y \n", "", " last"]
    assert hf_rows(source) == expected_rows
    assert corpus_text(source) == "\n\n = A = \n\n\n x \x0b y \n\n\n\n\n last"
    assert file_text(source) == " \n = A = \n x \x0b y \n   \n last"


def test_empty_corpus_is_refused(tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(ValueError, match="is empty"):
        corpus_text(empty)
    with pytest.raises(ValueError, match="is empty"):
        file_text(empty)
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
