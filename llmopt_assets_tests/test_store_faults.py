"""The store under faults: two real writer processes racing on one artifact, writers SIGKILLed at
random moments of a commit, a crash between the version rename and the pointer swap, stale and
corrupt artifacts. Each reproduces a fault of issue 14 that the earlier two-rename commit had."""

import multiprocessing
import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
import torch

from llmopt_assets.models.store import (
    STAGING,
    CorruptArtifactError,
    ModelStore,
    StaleArtifactError,
)
from llmopt_assets.techniques.loading import load_variant
from llmopt_assets_tests.store_writer import commit
from llmopt_assets_tests.tiny_models import tiny_model, tiny_tokenizer

FORK = multiprocessing.get_context("fork")  # a real second process, without re-importing torch


@pytest.fixture
def fast_root(tmp_path):
    """A store root on tmpfs when there is one: fsync there is free, so 600 commits take seconds;
    rename and flock semantics are the same as on disk."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path
    root = Path(tempfile.mkdtemp(dir=base, prefix="llmopt-store-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _race_writer(root: Path, seed: int, count: int, go, failures) -> None:
    store = ModelStore(root)
    go.wait()
    for index in range(count):
        try:
            commit(store, seed * 1_000_000 + index)
        except Exception:
            with failures.get_lock():
                failures.value += 1


def test_two_processes_300_commits_each_never_fail_nor_leak(fast_root: Path) -> None:
    store = ModelStore(fast_root)
    commit(store, 0)
    go, failures = FORK.Event(), FORK.Value("i", 0)
    writers = [FORK.Process(target=_race_writer, args=(fast_root, s, 300, go, failures)) for s in (1, 2)]
    for writer in writers:
        writer.start()
    go.set()
    reads = missing = 0
    while any(w.is_alive() for w in writers):
        # A reader during the race always finds a whole artifact (the old code had a window
        # between its two renames where the directory did not exist).
        try:
            store.manifest("tiny", "base")
        except (FileNotFoundError, CorruptArtifactError):
            missing += 1
        reads += 1
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert failures.value == 0
    assert reads > 0 and missing == 0
    assert len(store.unreferenced_versions("tiny", "base")) == 0
    assert len(list(store.versions_dir("tiny", "base").iterdir())) == 1
    assert list((fast_root / STAGING).iterdir()) == []
    store.verify(store.manifest("tiny", "base"))


def _commit_forever(root: Path, first_seed: int) -> None:
    store = ModelStore(root)
    index = 0
    while True:
        commit(store, first_seed + index)
        index += 1


def test_sigkill_at_random_moments_leaves_old_or_new_and_next_commit_cleans(fast_root: Path) -> None:
    store = ModelStore(fast_root)
    first = commit(store, 0)
    seen = {first.fingerprint}
    rng = random.Random(14)
    # The kill lands at a random moment within `window`; on a loaded machine a writer may not
    # reach its first commit in 80 ms, so a window that saw no new commit doubles (up to 5 s).
    window = 0.08
    before = first.fingerprint
    for attempt in range(25):
        writer = FORK.Process(target=_commit_forever, args=(fast_root, 10_000 * (attempt + 1)))
        writer.start()
        time.sleep(rng.uniform(0.0, window))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        assert writer.exitcode == -signal.SIGKILL
        manifest = store.manifest("tiny", "base")  # never missing
        store.verify(manifest)  # never half written
        if manifest.fingerprint == before:  # this writer committed nothing before the kill
            window = min(window * 2, 5.0)
        before = manifest.fingerprint
        seen.add(manifest.fingerprint)
    assert len(seen) > 1, "the writer never committed before being killed: kill later"
    commit(store, 1)
    # The next commit removed what the killed writers left: staging and unreferenced versions.
    assert list((fast_root / STAGING).iterdir()) == []
    assert store.unreferenced_versions("tiny", "base") == []
    assert not list((fast_root / "tiny").glob(".base.*.pointer"))


def test_crash_between_version_rename_and_pointer_swap_keeps_the_old(fast_root: Path, monkeypatch) -> None:
    store = ModelStore(fast_root)
    old = commit(store, 0)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed just before the pointer swap")

    with monkeypatch.context() as patch:
        patch.setattr("llmopt_assets.models.store.os.replace", crash)
        with pytest.raises(KeyboardInterrupt):
            commit(store, 1)
    assert store.manifest("tiny", "base") == old
    store.verify(old)
    assert len(store.unreferenced_versions("tiny", "base")) == 1  # the new version, stranded
    new = commit(store, 2)
    assert store.manifest("tiny", "base") == new
    assert store.unreferenced_versions("tiny", "base") == []


def test_artifact_of_the_old_layout_is_replaced_in_place(fast_root: Path) -> None:
    store = ModelStore(fast_root)
    commit(store, 0)
    pointer = store.artifact_dir("tiny", "base")
    version = store.current_version("tiny", "base")
    pointer.unlink()
    shutil.move(version, pointer)  # a plain directory, as the two-rename store wrote it
    assert store.manifest("tiny", "base").recipe == [{"step": "load", "seed": 0}]
    new = commit(store, 1)
    assert pointer.is_symlink() and store.manifest("tiny", "base") == new
    assert store.unreferenced_versions("tiny", "base") == []


def _write(store: ModelStore, seed: int = 0, technique: str = "base"):
    return store.write_weights(
        "tiny", technique, tiny_model("gpt2", seed=seed), tiny_tokenizer(), recipe=[{"step": "load"}],
        parent_fingerprint=None,
    )


def test_derived_artifact_refuses_replaced_parent_weights(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    base = _write(store, seed=0)
    derived = store.write_derived("tiny", "int8", base, recipe=[{"step": "quantize"}], load={})
    store.verify(derived)
    new_base = _write(store, seed=1)
    assert new_base.fingerprint != base.fingerprint
    with pytest.raises(StaleArtifactError, match=r"tiny\|int8 was derived from weights sha256 .* rematerialize"):
        store.verify(derived)
    with pytest.raises(StaleArtifactError):
        load_variant(store, derived)
    state = store.state("tiny", "int8")
    assert state.manifest is None and "derived from" in state.problem


def test_truncated_manifest_names_its_path_and_counts_as_corrupt(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    _write(store)
    path = store.artifact_dir("tiny", "base") / "manifest.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(CorruptArtifactError, match=f"{path}.* is not valid JSON"):
        store.manifest("tiny", "base")
    state = store.state("tiny", "base")
    assert state.manifest is None and str(path) in state.problem


def test_truncated_weights_are_reported_as_a_problem_not_reused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    _write(store)
    weights = store.artifact_dir("tiny", "base") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    state = store.state("tiny", "base")
    assert state.manifest is None and "do not match their manifest" in state.problem
    healed = _write(store)
    assert store.state("tiny", "base").manifest == healed


@pytest.mark.parametrize("model,technique", [("../evil", "base"), ("tiny", "../../x"), ("", "base"),
                                             ("tiny", "a/b"), ("Tiny", "base"), ("tiny", "")])
def test_keys_that_are_not_single_path_components_are_refused(tmp_path: Path, model: str, technique: str) -> None:
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ValueError, match="key"):
        store.write_derived(model, technique, _write(store), recipe=[], load={})
    assert {p.name for p in tmp_path.iterdir()} == {"store"}


def test_weights_loaded_through_the_pointer_are_the_committed_ones(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    manifest = _write(store, seed=3)
    model, _ = load_variant(store, manifest)
    reference = tiny_model("gpt2", seed=3)
    for (name, loaded), expected in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(loaded, expected), name
