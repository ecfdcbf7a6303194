"""Runs the Dagster UI knows: created through the project's code location, as `dg dev` or
`dagster job launch` would create them (remote origin, job snapshot, partition tags), then
executed in this process so a terminal user sees their progress and the demo pays no
per-run start-up. The UI lists them on Overview and each job's page, and can re-execute them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.execution.api import execute_run
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._utils.hosted_user_process import recon_job_from_origin

LOCATION = "llmopt_assets"  # workspace.yaml's location_name


@dataclass
class RunOutcome:
    job: str
    partition: str | None
    run_id: str
    success: bool
    seconds: float
    failures: list[str] = field(default_factory=list)  # one line per failed step (or the run)


class ProjectRuns:
    """Create and execute runs of the project's jobs in its code location."""

    def __init__(self, instance: dg.DagsterInstance, workspace_file: Path, run_config: dict) -> None:
        from llmopt_assets.definitions import defs

        self.definitions = defs()
        self.instance = instance
        self.workspace_file = workspace_file
        self.run_config = run_config
        self._stack = ExitStack()

    def __enter__(self) -> ProjectRuns:
        context = self._stack.enter_context(
            WorkspaceProcessContext(
                self.instance,
                WorkspaceFileTarget(paths=[str(self.workspace_file)]),
                code_server_log_level="ERROR",
            )
        )
        workspace = context.create_request_context()
        error = workspace.get_code_location_error(LOCATION)
        if error is not None:
            self._stack.close()
            raise RuntimeError(f"the code location {LOCATION!r} does not load: {error.message.strip()}")
        self.location = workspace.get_code_location(LOCATION)
        self.repository = next(iter(self.location.get_repositories().values()))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def has_job(self, name: str) -> bool:
        return self.repository.has_job(name)

    def run(self, job_name: str, partition_key: str | dg.MultiPartitionKey | None = None) -> RunOutcome:
        remote_job = self.repository.get_full_job(job_name)
        tags = dict(remote_job.tags)
        if partition_key is not None:
            # The tags Dagster puts on a partition's run (a multi-partition key gets one per dimension).
            partitions_def = self.definitions.resolve_job_def(job_name).partitions_def
            tags.update(partitions_def.get_tags_for_partition_key(str(partition_key)))
        plan = self.location.get_execution_plan(
            remote_job, self.run_config, step_keys_to_execute=None, known_state=None, instance=self.instance
        )
        snapshot = plan.execution_plan_snapshot
        run = self.instance.create_run(
            job_name=job_name,
            run_id=None,
            run_config=self.run_config,
            status=None,
            tags=tags,
            root_run_id=None,
            parent_run_id=None,
            step_keys_to_execute=snapshot.step_keys_to_execute,
            execution_plan_snapshot=snapshot,
            job_snapshot=remote_job.job_snapshot,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            asset_selection=None,
            asset_check_selection=None,
            resolved_op_selection=None,
            op_selection=None,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_graph=self.repository.asset_graph,
        )
        started = time.perf_counter()
        result = execute_run(recon_job_from_origin(remote_job.get_python_origin()), run, self.instance)
        return RunOutcome(
            job=job_name,
            partition=str(partition_key) if partition_key is not None else None,
            run_id=run.run_id,
            success=result.success,
            seconds=time.perf_counter() - started,
            failures=failure_lines(self.instance, run.run_id),
        )


def failure_lines(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """One line per failed step (its root error's first line), or the run's failure message."""
    lines = []
    records = instance.get_records_for_run(run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.STEP_FAILURE and event.step_failure_data is not None:
            error = event.step_failure_data.error
            root = (error.cause or error) if error is not None else None
            message = (root.message.strip().splitlines() or [""])[0] if root else "(no error recorded)"
            lines.append(f"{event.step_key}: {message[:400]}")
        elif event.event_type == DagsterEventType.RUN_FAILURE and not lines:
            lines.append(f"run failed: {(event.message or '').strip().splitlines()[0][:400] if event.message else 'no message'}")
    return lines


@contextmanager
def project_runs(instance: dg.DagsterInstance, workspace_file: Path, run_config: dict) -> Iterator[ProjectRuns]:
    with ProjectRuns(instance, workspace_file, run_config) as runs:
        yield runs
