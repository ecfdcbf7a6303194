"""The re-benchmark schedule and sensor, evaluated against an instance holding recorded
materializations: which partitions they ask for, with which run keys, and why."""

from datetime import datetime

import dagster as dg
import pytest

from llmopt_assets.definitions import defs
from llmopt_assets.defs.rebenchmark import remeasure_sensor, weekly_rebenchmark
from llmopt_assets.measure.hardware import hardware_fingerprint
from llmopt_assets.measure.remeasure import MeasurementBasis, remeasure_reasons

MODEL = "tiny"
BASE_FP, INT8_FP, NF4_FP = "b" * 64, "8" * 64, "4" * 64


DEFINITIONS = defs()
GRAPH = DEFINITIONS.resolve_asset_graph()


def code_version(key: str) -> str:
    return GRAPH.get(dg.AssetKey(key)).code_version


def record(instance, key: str, partition: str, *, code: str | None = None, **metadata) -> None:
    tags = {"dagster/code_version": code} if code else None
    instance.report_runless_asset_event(
        dg.AssetMaterialization(key, partition=partition, metadata=metadata, tags=tags)
    )


def measured(instance, technique: str, fingerprint: str, hardware: str | None = None, code: str | None = None):
    partition = f"{MODEL}|{technique}"
    record(instance, "compressed_variant", partition, fingerprint=fingerprint)
    record(instance, "perplexity_run", partition, code=code or code_version("perplexity_run"),
           fingerprint=fingerprint, hardware_fingerprint=hardware or hardware_fingerprint())
    record(instance, "comparison_run", partition, code=code_version("comparison_run"), fingerprint=fingerprint,
           base_fingerprint=BASE_FP, hardware_fingerprint=hardware or hardware_fingerprint())


def prepared(instance: dg.DagsterInstance) -> dg.DagsterInstance:
    instance.add_dynamic_partitions("model", [MODEL])
    record(instance, "base_model", MODEL, fingerprint=BASE_FP)
    return instance


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield prepared(instance)


@pytest.fixture
def persistent_instance():
    # A schedule context needs an instance it can refer to: a temporary one on disk.
    with dg.instance_for_test() as instance:
        yield prepared(instance)


def evaluate(instance) -> dg.SensorResult:
    return remeasure_sensor(dg.build_sensor_context(instance=instance, definitions=DEFINITIONS))


def test_nothing_is_asked_while_every_measurement_is_current(instance) -> None:
    measured(instance, "base", BASE_FP)
    measured(instance, "int8", INT8_FP)
    result = evaluate(instance)
    assert not result.run_requests
    assert "current weights, code and hardware" in result.skip_reason.skip_message


def test_a_rebuilt_variant_is_measured_again_once(instance) -> None:
    measured(instance, "base", BASE_FP)
    measured(instance, "int8", INT8_FP)
    record(instance, "compressed_variant", f"{MODEL}|int8", fingerprint="9" * 64)  # rebuilt, new weights
    first = evaluate(instance)
    assert [r.partition_key for r in first.run_requests] == [f"{MODEL}|int8"]
    request = first.run_requests[0]
    assert set(request.asset_selection) == {dg.AssetKey("perplexity_run"), dg.AssetKey("comparison_run")}
    assert "weights changed (888888888888 -> 999999999999)" in request.tags["llmopt/remeasure_reason"]
    # Same basis, same run key: the daemon launches it once however many ticks see it.
    assert evaluate(instance).run_requests[0].run_key == request.run_key


def test_other_hardware_or_an_older_code_version_asks_only_what_changed(instance) -> None:
    measured(instance, "base", BASE_FP)
    measured(instance, "nf4", NF4_FP, hardware="another-machine")
    measured(instance, "int8", INT8_FP, code="run0.perplexity0")
    requests = {r.partition_key: r for r in evaluate(instance).run_requests}
    assert set(requests) == {f"{MODEL}|nf4", f"{MODEL}|int8"}
    assert "hardware changed (another-machine" in requests[f"{MODEL}|nf4"].tags["llmopt/remeasure_reason"]
    assert requests[f"{MODEL}|int8"].asset_selection == [dg.AssetKey("perplexity_run")]
    assert "code version changed (run0.perplexity0 ->" in requests[f"{MODEL}|int8"].tags["llmopt/remeasure_reason"]


def test_a_new_base_re_times_every_comparison_of_its_model(instance) -> None:
    measured(instance, "base", BASE_FP)
    measured(instance, "int8", INT8_FP)
    record(instance, "base_model", MODEL, fingerprint="c" * 64)
    requests = evaluate(instance).run_requests
    assert {r.partition_key for r in requests} == {f"{MODEL}|base", f"{MODEL}|int8"}
    assert all(dg.AssetKey("comparison_run") in r.asset_selection for r in requests)


def test_weekly_schedule_asks_every_built_variant_once_per_tick(persistent_instance) -> None:
    instance = persistent_instance
    measured(instance, "base", BASE_FP)
    measured(instance, "int8", INT8_FP)
    tick = datetime(2026, 11, 29, 2, 0)
    requests = weekly_rebenchmark(dg.build_schedule_context(instance=instance, scheduled_execution_time=tick))
    assert [(r.partition_key, r.run_key) for r in requests] == [
        (f"{MODEL}|base", "rebenchmark:2026-11-29:tiny|base"),
        (f"{MODEL}|int8", "rebenchmark:2026-11-29:tiny|int8"),
    ]
    assert all(r.asset_selection == [dg.AssetKey("comparison_run")] for r in requests)


def test_reasons_name_each_change() -> None:
    before = MeasurementBasis("a" * 64, "1", "hw1")
    assert remeasure_reasons(before, before) == []
    after = MeasurementBasis("b" * 64, "2", "hw2")
    assert remeasure_reasons(before, after) == [
        "weights changed (aaaaaaaaaaaa -> bbbbbbbbbbbb)",
        "code version changed (1 -> 2)",
        "hardware changed (hw1 -> hw2)",
    ]
    assert before.key() != after.key() and before.key() == MeasurementBasis("a" * 64, "1", "hw1").key()
