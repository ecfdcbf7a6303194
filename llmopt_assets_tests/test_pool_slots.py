"""A run SIGKILLed while its step holds the `cpu` pool slot: the slot stays claimed and a later
run waits forever (issue 14, fault 2) until the dead run's slot is freed."""

import multiprocessing
import os
import signal
import time
from pathlib import Path

import dagster as dg
import pytest

from llmopt_assets.defs.pool_slots import dead_run_slot_sensor, find_leaked_slots, free_slots_of_dead_runs

FORK = multiprocessing.get_context("fork")


@dg.op(pool="cpu")
def hold_the_slot(context: dg.OpExecutionContext) -> None:
    Path(os.environ["LLMOPT_TEST_FLAG"]).write_text(str(os.getpid()))
    time.sleep(120)


@dg.op(pool="cpu")
def quick_step() -> int:
    return 1


@dg.job
def holding_job() -> None:
    hold_the_slot()


@dg.job
def quick_job() -> None:
    quick_step()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limit: 1\ntelemetry:\n  enabled: false\n")
    return tmp_path


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home))


def _run_holding_job(home: Path, flag: Path) -> None:
    os.environ["LLMOPT_TEST_FLAG"] = str(flag)
    holding_job.execute_in_process(instance=_instance(home), raise_on_error=False)


def _run_quick_job(home: Path, done: Path) -> None:
    result = quick_job.execute_in_process(instance=_instance(home), raise_on_error=False)
    done.write_text("ok" if result.success else "failed")


def _killed_run_holding_the_slot(home: Path) -> int:
    flag = home / "holding"
    holder = FORK.Process(target=_run_holding_job, args=(home, flag))
    holder.start()
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert time.monotonic() < deadline, "the holding step never started"
        assert holder.is_alive(), "the holding run died before its step started"
        time.sleep(0.05)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    return holder.pid


def test_a_killed_runs_slot_blocks_later_runs_until_freed(home: Path) -> None:
    pid = _killed_run_holding_the_slot(home)
    instance = _instance(home)
    info = instance.event_log_storage.get_concurrency_info("cpu")
    assert [s.step_key for s in info.claimed_slots] == ["hold_the_slot"]
    [killed_run] = instance.get_runs()
    assert killed_run.status == dg.DagsterRunStatus.STARTED

    # The fault: a later run cannot get the slot (it would wait forever).
    done = home / "quick-done"
    waiting = FORK.Process(target=_run_quick_job, args=(home, done))
    waiting.start()
    waiting.join(timeout=5)
    assert waiting.is_alive() and not done.exists()

    # The fix: the dead run's slot is found, freed and said so; the waiting run then proceeds.
    leaked = find_leaked_slots(instance)
    assert [(s.pool, s.run_id, s.step_keys) for s in leaked] == [("cpu", killed_run.run_id, ("hold_the_slot",))]
    assert f"pid {pid}" in leaked[0].describe() and "gone" in leaked[0].describe()
    assert free_slots_of_dead_runs(instance) == leaked
    waiting.join(timeout=60)
    assert done.read_text() == "ok"
    assert instance.get_run_by_id(killed_run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert find_leaked_slots(instance) == []


def test_a_live_runs_slot_is_left_alone(home: Path) -> None:
    flag = home / "holding"
    holder = FORK.Process(target=_run_holding_job, args=(home, flag))
    holder.start()
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert find_leaked_slots(_instance(home)) == []
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()


def test_the_sensor_frees_a_dead_runs_slot_and_says_so(home: Path) -> None:
    _killed_run_holding_the_slot(home)
    instance = _instance(home)
    result = dead_run_slot_sensor(dg.build_sensor_context(instance=instance))
    assert "freed pool 'cpu' slot held by run" in result.skip_message
    assert instance.event_log_storage.get_concurrency_info("cpu").claimed_slots == []
