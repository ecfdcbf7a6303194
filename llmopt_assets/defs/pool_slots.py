"""Pool slots held by dead runs: found, freed and reported, so a killed run never hangs the next.

A step in `pool="cpu"` claims the pool's slot in the Dagster instance and frees it when it ends.
A run SIGKILLed inside such a step (or by the OOM killer) never frees it, and stays STARTED:
every later run waits for the slot forever. Dagster's run monitoring frees slots only of runs
that have *ended*, and only with the daemon. Here a run is dead when it has not ended but none of
the processes its engine events name (the in-process executor's pid, the multiprocess
executor's parent and step pids) is alive on this machine: then its slots are freed and the run
is marked failed, with a message saying so. Used by the demo at start, by `llmopt doctor` and by
a sensor (for `dg dev`/`dagster dev` users, whose daemon evaluates it every 30 s).

Process checks are local: correct for this project's instance (SQLite under DAGSTER_HOME, runs
launched on this machine), not for a shared instance whose runs execute on other hosts.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg
import psutil
from dagster._core.events import DagsterEventType

# A process started up to this long after the engine event that named its pid is still the
# same process (clock granularity); one started later reuses a dead run's pid.
PID_REUSE_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class LeakedSlot:
    pool: str
    run_id: str
    step_keys: tuple[str, ...]
    run_status: str  # the run's status when found (STARTED for a killed run)
    pids: tuple[int, ...]  # the processes its engine events named
    reason: str

    def describe(self) -> str:
        steps = ", ".join(self.step_keys) or "no step"
        return f"pool {self.pool!r} slot held by run {self.run_id[:8]} ({steps}): {self.reason}"


def run_pids(instance: dg.DagsterInstance, run_id: str) -> list[tuple[int, float]]:
    """(pid, time of the event naming it) for every process the run's engine events name."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records
    found = []
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.engine_event_data if event is not None else None
        pid = data.metadata.get("pid") if data is not None else None
        if pid is not None and str(pid.value).isdigit():
            found.append((int(pid.value), record.event_log_entry.timestamp))
    return found


def process_alive(pid: int, named_at: float) -> bool:
    """The process that had `pid` at time `named_at` is still running (not a reuse, no zombie)."""
    try:
        process = psutil.Process(pid)
        return (
            process.create_time() <= named_at + PID_REUSE_SLACK_SECONDS
            and process.status() != psutil.STATUS_ZOMBIE
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _slot_holders(instance: dg.DagsterInstance) -> dict[str, dict[str, list[str]]]:
    """run_id -> pool -> step keys holding or assigned a slot."""
    storage = instance.event_log_storage
    holders: dict[str, dict[str, list[str]]] = {}
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        steps = [(s.run_id, s.step_key) for s in info.claimed_slots]
        steps += [(p.run_id, p.step_key) for p in info.pending_steps if p.assigned_timestamp is not None]
        for run_id, step_key in steps:
            pool_steps = holders.setdefault(run_id, {}).setdefault(pool, [])
            if step_key not in pool_steps:  # a claimed step is also listed as assigned
                pool_steps.append(step_key)
    return holders


def find_leaked_slots(instance: dg.DagsterInstance) -> list[LeakedSlot]:
    """Slots held by runs that ended, were deleted, or whose processes are all gone."""
    leaked = []
    for run_id, pools in _slot_holders(instance).items():
        run = instance.get_run_by_id(run_id)
        pids = run_pids(instance, run_id) if run is not None else []
        if run is None:
            status, reason = "DELETED", "the run no longer exists"
        elif run.is_finished:
            status, reason = run.status.value, f"the run ended ({run.status.value}) without freeing it"
        elif pids and not any(process_alive(pid, at) for pid, at in pids):
            status = run.status.value
            names = ", ".join(str(pid) for pid, _ in pids)
            reason = f"the run is {status} but its process (pid {names}) is gone: killed or crashed"
        else:
            continue  # alive, or no process named yet: a live run about to report its pid
        for pool, steps in pools.items():
            leaked.append(LeakedSlot(pool, run_id, tuple(steps), status, tuple(p for p, _ in pids), reason))
    return leaked


def free_leaked_slots(instance: dg.DagsterInstance, leaked: Iterable[LeakedSlot]) -> list[LeakedSlot]:
    """Free each run's slots; a run that had not ended is marked failed, with the reason."""
    freed = []
    done: set[str] = set()
    for slot in leaked:
        if slot.run_id not in done:
            instance.event_log_storage.free_concurrency_slots_for_run(slot.run_id)
            run = instance.get_run_by_id(slot.run_id)
            if run is not None and not run.is_finished:
                instance.report_run_failed(
                    run, message=f"llmopt freed its pool slot: {slot.reason}. Re-launch it to measure again."
                )
            done.add(slot.run_id)
        freed.append(slot)
    return freed


def free_slots_of_dead_runs(instance: dg.DagsterInstance) -> list[LeakedSlot]:
    """Find and free the slots of dead runs; what was freed, for the caller to say so."""
    return free_leaked_slots(instance, find_leaked_slots(instance))


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def dead_run_slot_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Frees pool slots held by runs whose process was killed (SIGKILL, OOM killer), so later runs
    do not wait forever; each freed slot is logged and its run marked failed."""
    freed = free_slots_of_dead_runs(context.instance)
    for slot in freed:
        context.log.warning(f"freed {slot.describe()}")
    if freed:
        return dg.SkipReason("freed " + "; ".join(slot.describe() for slot in freed))
    return dg.SkipReason("no pool slot held by a dead run")
