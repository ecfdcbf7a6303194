"""`llmopt doctor` on a store holding one of each leftover a crash or a bad disk can leave."""

import multiprocessing
import shutil
from pathlib import Path

import pytest

from llmopt_assets.cli import doctor
from llmopt_assets.models.store import STAGING, ModelStore
from llmopt_assets_tests.store_writer import commit


def _dead_pid() -> int:
    child = multiprocessing.get_context("fork").Process(target=lambda: None)
    child.start()
    child.join()
    return child.pid


@pytest.fixture
def damaged(tmp_path: Path, monkeypatch) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    commit(store, 0)
    derived = store.write_derived("tiny", "int8", store.manifest("tiny", "base"), recipe=[], load={})
    commit(store, 1)
    assert derived.parent_fingerprint != store.manifest("tiny", "base").fingerprint
    # A writer killed between its version rename and its pointer swap.
    with monkeypatch.context() as patch:
        patch.setattr("llmopt_assets.models.store.os.replace", _raise_interrupt)
        with pytest.raises(KeyboardInterrupt):
            commit(store, 2)
    # A truncated weights file in another artifact.
    store.write_weights("tiny", "kd", *_tiny_pair(), recipe=[], parent_fingerprint=None)
    weights = store.artifact_dir("tiny", "kd") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    # A corrupt corpus and the lock file of an artifact deleted by hand.
    corpus = store.corpus_path("tiny", "eval")
    corpus.parent.mkdir(parents=True)
    corpus.write_bytes(b"\x00" * 10)
    store.write_derived("tiny", "nf4", store.manifest("tiny", "base"), recipe=[], load={})
    store.artifact_dir("tiny", "nf4").unlink()
    shutil.rmtree(store.versions_dir("tiny", "nf4"))
    # Last (a commit removes it): a writer killed while filling its staging directory.
    (store.root / STAGING / f"{_dead_pid()}-0123456789abcdef").mkdir(parents=True)
    return store


def _raise_interrupt(*args, **kwargs):
    raise KeyboardInterrupt("killed")


def _tiny_pair():
    from llmopt_assets_tests.store_writer import NoTokenizer, TinyWeights

    return TinyWeights(7), NoTokenizer()


def test_doctor_finds_each_fault_then_repairs_them(damaged: ModelStore, tmp_path: Path, capsys) -> None:
    args = ["--store", str(damaged.root), "--dagster-home", str(tmp_path / "no-instance")]
    assert doctor.main(args) == 1
    report = capsys.readouterr().out
    for kind in ("orphan-staging", "orphan-version", "stale-derived", "corrupt-artifact", "corrupt-corpus",
                 "stale-lock"):
        assert kind in report, kind
    assert "tiny|int8 was derived from weights" in report
    assert "llmopt doctor --repair" in report

    assert doctor.main([*args, "--repair"]) == 0
    assert doctor.main(args) == 0
    assert "healthy" in capsys.readouterr().out
    # Unusable artifacts are gone (so the next run rebuilds them); the good one still verifies.
    assert not damaged.exists("tiny", "int8") and not damaged.exists("tiny", "kd")
    damaged.verify(damaged.manifest("tiny", "base"))
    assert damaged.manifest("tiny", "base").recipe == [{"step": "load", "seed": 1}]


def test_doctor_repoints_an_artifact_whose_pointer_is_missing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    committed = commit(store, 0)
    store.artifact_dir("tiny", "base").unlink()  # as a kill during the old-layout migration leaves it
    args = ["--store", str(store.root), "--dagster-home", str(tmp_path)]
    assert doctor.main(args) == 1
    assert doctor.main([*args, "--repair"]) == 0
    assert store.manifest("tiny", "base") == committed
