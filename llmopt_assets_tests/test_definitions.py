"""The definitions load, and the asset graph is what the design says (a change shows in review)."""

from llmopt_assets.definitions import defs

EXPECTED_DEPENDENCIES = {
    "base_model": set(),
    "eval_corpus": {"base_model"},
    "calibration_corpus": {"base_model"},
    "distillation_corpus": {"base_model"},
    "distilled_student": {"base_model", "distillation_corpus"},
    "compressed_variant": {"base_model", "distilled_student", "calibration_corpus"},
    "perplexity_run": {"compressed_variant", "eval_corpus"},
    "comparison_run": {"compressed_variant", "base_model", "eval_corpus"},
    "measurements": {"perplexity_run", "comparison_run"},
    "opt_scores": {"measurements", "benchmark_run"},
    "benchmark_run": {"compressed_variant"},
    "trade_off_charts": {"opt_scores"},
    "decision_report": {"opt_scores", "measurements", "benchmark_run"},
}


def test_asset_graph_snapshot() -> None:
    graph = defs().resolve_asset_graph()
    dependencies = {
        key.to_user_string(): {parent.to_user_string() for parent in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert dependencies == EXPECTED_DEPENDENCIES


def test_jobs_checks_sensor_and_schedule_are_defined() -> None:
    definitions = defs()
    assert {job.name for job in definitions.jobs} >= {
        "prepare_models_job", "students_job", "variants_job", "benchmarks_job", "scoring_job"
    }
    checks = {key.name for key in definitions.resolve_asset_graph().asset_check_keys}
    assert checks == {
        "heads_really_removed", "exact_n_m_sparsity", "modules_really_quantized", "perplexity_plausible",
        "every_benchmark_scored", "scores_possible_for_item_count",
    }
    assert sorted(s.name for s in definitions.sensors) == ["dead_run_slot_sensor", "model_registry_sensor", "remeasure_sensor"]
    assert sorted(s.name for s in definitions.schedules) == ["weekly_rebenchmark", "weekly_rescoring"]


def test_every_asset_is_documented_grouped_and_kinded() -> None:
    graph = defs().resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, key
        assert node.group_name != "default", key
        assert node.kinds, key


def test_every_check_is_described_and_steps_are_routed() -> None:
    graph = defs().resolve_asset_graph()
    for key in graph.asset_check_keys:
        assert graph.get_check_spec(key).description, key
    # Routing by op tags (Celery queues) and pools: building on the cpu queue, measuring on gpu.
    job = defs().resolve_job_def("variants_job")
    tags = {node.name: node.definition.tags.get("dagster-celery/queue") for node in job.graph.nodes}
    assert tags["compressed_variant"] == "cpu" and tags["perplexity_run"] == "gpu"
