"""The variants job through the Celery executor: a real redis-server broker and two Celery workers
on loopback, one per queue (cpu, gpu), over a shared SQLite instance; which worker ran which step."""

import os
import shutil
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from llmopt_assets_tests.celery_job import ROOT_VARIABLE, prepare_assets, tiny_resources, variants_on_celery
from llmopt_assets_tests.processes import free_port, start, stop, wait_until, write_tiny_llama

MODEL = "tiny-llama"
TECHNIQUES = ("base", "int8")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _redis_server() -> str:
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(path).is_file():
        # CI installs it (.ci/run); a machine without it must not pass this test silently.
        raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
    return path


def _events(instance: dg.DagsterInstance, run_id: str) -> list:
    return [e for e in instance.all_logs(run_id) if e.is_dagster_event]


@pytest.mark.timeout(900)
def test_variants_job_runs_on_two_celery_workers_routed_by_queue(tmp_path: Path) -> None:
    import redis

    home, root = tmp_path / "dagster_home", tmp_path / "project"
    home.mkdir()
    root.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # SQLite storage under home
    write_tiny_llama(root, MODEL)
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    config_dir = tmp_path / "celery_config"
    config_dir.mkdir()
    # Workers read broker and backend from this module (dagster_celery.make_app imports it).
    (config_dir / "dagster_celery_config.py").write_text(
        f"broker_url = {broker!r}\nresult_backend = {f'redis://127.0.0.1:{port}/1'!r}\n"
    )
    env = {**os.environ, "DAGSTER_HOME": str(home), ROOT_VARIABLE: str(root), "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join([str(config_dir), str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    started = []
    try:
        started.append(start([_redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                              "--appendonly", "no"], tmp_path / "redis.log"))
        client = redis.Redis(host="127.0.0.1", port=port)

        def redis_up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(redis_up, 30, "redis-server", started)
        for queue in ("cpu", "gpu"):
            started.append(start(
                [sys.executable, "-m", "celery", "-A", "dagster_celery.app", "worker", "-Q", queue,
                 "-n", f"{queue}-worker@llmopt", "--pool", "solo", "--concurrency", "1",
                 "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
                tmp_path / f"worker-{queue}.log", env=env, cwd=PROJECT_ROOT,
            ))

        def workers_up() -> bool:
            return all("ready." in (tmp_path / f"worker-{q}.log").read_text(errors="replace") for q in ("cpu", "gpu"))

        wait_until(workers_up, 120, "celery workers", started)

        os.environ["DAGSTER_HOME"], os.environ[ROOT_VARIABLE] = str(home), str(root)
        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions("model", [MODEL])
            prepared = dg.materialize(prepare_assets(), partition_key=MODEL, resources=tiny_resources(root),
                                      instance=instance)
            assert prepared.success
            run_config = {"execution": {"config": {"broker": broker, "backend": f"redis://127.0.0.1:{port}/1"}}}
            results, seconds = {}, {}
            for technique in TECHNIQUES:
                begun = time.perf_counter()
                results[technique] = dg.execute_job(
                    dg.reconstructable(variants_on_celery), instance=instance, run_config=run_config,
                    # What the UI tags a multi-partition run with (the key and each dimension).
                    tags={"dagster/partition": f"{MODEL}|{technique}", "dagster/partition/model": MODEL,
                          "dagster/partition/technique": technique},
                )
                seconds[technique] = time.perf_counter() - begun
                assert results[technique].success, technique
            for technique, result in results.items():
                events = _events(instance, result.run_id)
                queues = {e.step_key: e.message.rsplit('"', 2)[-2] for e in events
                          if e.message and e.message.startswith("Submitting celery task")}
                workers = {e.step_key: e.dagster_event.event_specific_data.metadata["Celery worker"].value for e in events
                           if e.message and "Executing steps" in e.message}
                assert queues == {"compressed_variant": "cpu", "perplexity_run": "gpu", "comparison_run": "gpu"}
                assert workers == {"compressed_variant": "cpu-worker@llmopt", "perplexity_run": "gpu-worker@llmopt",
                                   "comparison_run": "gpu-worker@llmopt"}
                messages = [e.message for e in instance.all_logs(result.run_id) if e.user_message]
                assert any("no CUDA device: running on the CPU" in m for m in messages) or __import__("torch").cuda.is_available()
                print(f"celery {technique}: {seconds[technique]:.1f} s; queues {queues}; workers {workers}")
            # The same partition in-process (one process, no broker), for the wall-time comparison.
            begun = time.perf_counter()
            in_process = variants_on_celery().execute_in_process(
                instance=instance, partition_key=dg.MultiPartitionKey({"model": MODEL, "technique": "int8"})
            )
            assert in_process.success
            print(f"in-process int8: {time.perf_counter() - begun:.1f} s (celery: {seconds['int8']:.1f} s)")
        perplexities = pl.read_parquet(root / "tables" / "perplexity_run" / f"{MODEL}__int8.parquet")
        assert perplexities["perplexity"][0] > 1.0
        comparisons = pl.read_parquet(root / "tables" / "comparison_run" / f"{MODEL}__int8.parquet")
        assert set(comparisons["arm"].to_list()) == {"base", "variant"}
    finally:
        for process in reversed(started):
            stop(process)
        for process in started:
            assert process.poll() is not None, f"{process.args[0]} (pid {process.pid}) still running"
