"""The asset graph end to end on a tiny Llama saved to a local directory."""

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import torch

from llmopt_assets.defs.benchmarks.assets import benchmark_run
from llmopt_assets.defs.data.assets import calibration_corpus, distillation_corpus, eval_corpus
from llmopt_assets.defs.measurement.assets import comparison_run, measurements, perplexity_run
from llmopt_assets.defs.models.assets import base_model, compressed_variant, distilled_student
from llmopt_assets.defs.resources import (
    ComputeResource,
    EvaluationProfileResource,
    project_resources,
)
from llmopt_assets.defs.scoring.assets import opt_scores, trade_off_charts
from llmopt_assets.models.store import ModelStore
from llmopt_assets.measure.corpus import WIKITEXT2_VALID
from llmopt_assets.scoring.table import ENERGY_MIRRORS_TIME
from llmopt_assets_tests.tiny_models import fit_briefly, tiny_model, tiny_tokenizer

MODEL = "tiny-llama"
TECHNIQUES = ["base", "int8", "nf4+ah80", "kd", "kd+int8+ah90", "kd-rkl", "sparsegpt-2:4", "magnitude-2:4",
              "int8-dyn+ah90", "kd+bf16"]
BENCHMARKED = ["base", "int8"]
PREPARE = [base_model, eval_corpus, calibration_corpus, distillation_corpus]
VARIANT = [compressed_variant, perplexity_run, comparison_run]
SCORING = [measurements, opt_scores, trade_off_charts]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("project")
    weights = root / "tiny-llama-weights"
    tokenizer = tiny_tokenizer()
    # Trained a little so it beats a uniform guess (the perplexity_plausible check fails a model
    # that does not), on text the evaluation never sees.
    text = WIKITEXT2_VALID.read_text(encoding="utf-8")[20000:60000]
    model = fit_briefly(tiny_model("llama"), torch.tensor(tokenizer(text)["input_ids"]))
    with torch.no_grad():
        # Sharpen the queries and keys so heads attend to one token each (a random model's
        # attention is diffuse): head pruning then has heads above its thresholds to remove.
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(60.0)
            layer.self_attn.k_proj.weight.mul_(60.0)
    model.save_pretrained(weights)
    tokenizer.save_pretrained(weights)
    registry = root / "models.yaml"
    registry.write_text(f"models:\n  {MODEL}:\n    source: local\n    path: {weights}\n")
    # Comparisons of 4 pairs of ≥ 20 ms repetitions: the tiny model's windows take ~1 ms.
    # The sharpened heads are sharp on a different key from each query, which only the
    # per-query-max criterion prunes (the literal single-key-share one is tested on its own in
    # test_head_pruning); choosing it here also runs the criterion option end to end.
    resources = project_resources(root, EvaluationProfileResource(
        profile="smoke", repetitions=2, pairs=4, min_repetition_seconds=0.02, head_criterion="per-query-max",
    ))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", [MODEL])
    prepared = dg.materialize(PREPARE, partition_key=MODEL, resources=resources, instance=instance)
    assert prepared.success
    for distillation in ("kd", "kd-rkl"):
        student = dg.MultiPartitionKey({"model": MODEL, "distillation": distillation})
        trained = dg.materialize([*PREPARE, distilled_student], partition_key=student, resources=resources,
                                 instance=instance, selection=[distilled_student])
        assert trained.success
    results = {}
    for technique in TECHNIQUES:
        key = dg.MultiPartitionKey({"model": MODEL, "technique": technique})
        results[technique] = dg.materialize(
            VARIANT, partition_key=key, resources=resources, instance=instance,
            selection=VARIANT,
        )
    # The benchmark round on two variants only: the others keep the perplexity-only quality term.
    benchmark_resources = resources | {
        "profile": EvaluationProfileResource(
            profile="smoke", repetitions=2, benchmarks=["arc_challenge", "winogrande"], benchmark_limit=3
        )
    }
    benchmarks = {
        technique: dg.materialize(
            [benchmark_run], partition_key=dg.MultiPartitionKey({"model": MODEL, "technique": technique}),
            resources=benchmark_resources, instance=instance,
        )
        for technique in BENCHMARKED
    }
    scoring = dg.materialize([*SCORING, perplexity_run, comparison_run, benchmark_run], resources=resources, instance=instance,
                             selection=SCORING)
    return {
        "root": root, "results": results, "scoring": scoring, "instance": instance, "resources": resources,
        "benchmarks": benchmarks,
    }


def test_every_variant_materializes_with_passing_checks(project: dict) -> None:
    for technique, result in project["results"].items():
        assert result.success, technique
        checks = result.get_asset_check_evaluations()
        assert checks and all(c.passed for c in checks), (technique, [(c.check_name, c.passed) for c in checks])


def test_opt_scores_cover_every_technique(project: dict) -> None:
    assert project["scoring"].success
    table = pl.read_parquet(Path(project["root"]) / "tables" / "opt_scores.parquet")
    assert sorted(table["technique"].to_list()) == sorted(TECHNIQUES)
    base = table.filter(pl.col("technique") == "base").row(0, named=True)
    assert base["pc"] == pytest.approx(1.0)
    # The base row is the A/A control: the base against a second loaded copy of itself.
    covers = base["tc_ci95_low"] <= 1.0 <= base["tc_ci95_high"] and base["ec_ci95_low"] <= 1.0 <= base["ec_ci95_high"]
    assert base["control"] == ("passed" if covers else "failed")
    assert set(table["control_failed"].to_list()) == {not covers}
    # The CPU-time meter's energy is an estimate derived from time, and the table says so.
    assert "estimate" in base["energy_method"]
    assert ENERGY_MIRRORS_TIME in base["flags"] and set(table["energy_informative"].to_list()) == {False}
    assert set(table["pairs"].to_list()) == {4}
    pruned = table.filter(pl.col("technique") == "sparsegpt-2:4").row(0, named=True)
    assert pruned["pc"] != pytest.approx(1.0, abs=1e-6)  # half the weights gone changes predictions
    assert all(table["opt_balanced_perplexity"].is_not_null())
    # Memory as loaded: 2:4 sparsity keeps dense storage (same bytes); int8 packs its linear layers.
    size = dict(zip(table["technique"].to_list(), table["weights_bytes"].to_list()))
    assert size["sparsegpt-2:4"] == size["base"]
    assert size["kd+int8+ah90"] < size["kd"]


def test_benchmark_round_scores_variants_and_widens_their_quality_term(project: dict) -> None:
    for technique, result in project["benchmarks"].items():
        assert result.success, technique
        checks = result.get_asset_check_evaluations()
        assert {c.check_name for c in checks} == {"every_benchmark_scored", "scores_possible_for_item_count"}
        assert all(c.passed for c in checks), technique
    rows = pl.read_parquet(Path(project["root"]) / "tables" / "benchmark_run" / f"{MODEL}__int8.parquet")
    assert sorted(rows["benchmark"].to_list()) == ["arc_challenge", "winogrande"]
    assert rows["items"].to_list() == [3, 3]
    assert rows["lm_eval_model"].to_list() == ["hflm-prefix-cache"] * 2  # the default, recorded
    table = pl.read_parquet(Path(project["root"]) / "tables" / "opt_scores.parquet")
    basis = dict(zip(table["technique"].to_list(), table["quality_basis"].to_list()))
    assert basis["base"] == "perplexity" and basis["kd"] == "perplexity"
    int8 = table.filter(pl.col("technique") == "int8").row(0, named=True)
    if int8["quality_basis"] == "perplexity+benchmarks":
        assert int8["opt_balanced"] == pytest.approx(
            int8["quality_penalty_combined"] * (0.5 * int8["tc"] + 0.5 * int8["ec"])
        )
    elif int8["quality_basis"].startswith("perplexity (no informative benchmark"):
        # 3 items rarely lift a random tiny base above chance: the opt stays perplexity-only
        assert int8["opt_balanced"] == pytest.approx(int8["opt_balanced_perplexity"])
        assert "uninformative: base not above chance (n=3" in int8["flags"]
    else:  # an informative benchmark on which the variant sits at or below 0.8 × chance: no opt
        assert "below the chance floor" in int8["quality_basis"] and int8["opt_balanced"] is None
    assert int8["opt_balanced_perplexity"] == pytest.approx(int8["pc"] ** 1.5 * (0.5 * int8["tc"] + 0.5 * int8["ec"]))


def test_decision_report_on_the_pipeline_tables(project: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmopt_assets.defs.scoring import report_assets

    monkeypatch.setattr(report_assets, "REPORTS_DIR", tmp_path)  # not the project's var/reports
    result = dg.materialize(
        [*SCORING, perplexity_run, comparison_run, benchmark_run, report_assets.decision_report],
        resources=project["resources"], instance=project["instance"], selection=[report_assets.decision_report],
        run_config={"ops": {"decision_report": {"config": {"max_memory_mb": 0.001}}}},
    )
    assert result.success
    markdown = (tmp_path / "decision_report.md").read_text()
    assert f"**{MODEL}**" in markdown and "- For energy use: **" in markdown
    assert "Memory (MB)" in markdown and "pairs after warm-up" in markdown
    assert "benchmark_arc_challenge" in markdown  # the scores of the benchmark round, beside Pc
    # Every tiny variant weighs more than 1 kB: the constraint has no answer, and says so.
    assert "nothing satisfies the constraints" in markdown
    assert (tmp_path / "decision_report-charts" / f"{MODEL}-repetitions.png").stat().st_size > 0


def test_lineage_runs_from_result_to_weights(project: dict) -> None:
    store = ModelStore(Path(project["root"]) / "store")
    base = store.manifest(MODEL, "base")
    student = store.manifest(MODEL, "kd")
    variant = store.manifest(MODEL, "kd+int8+ah90")
    assert student.parent_fingerprint == base.fingerprint
    pruned_weights = store.manifest_at(store.root / variant.weights_dir)
    assert pruned_weights.parent_fingerprint == student.fingerprint
    assert variant.load == {"quantization": "int8"}
    heads_step = next(step for step in pruned_weights.recipe if step["step"] == "prune-heads")
    assert heads_step["criterion"] == "per-query-max"  # the profile's choice, in the recipe
    assert pruned_weights.details["prune-heads"]["criterion"] == "per-query-max"
    rows = pl.read_parquet(Path(project["root"]) / "tables" / "measurements.parquet")
    row = rows.filter(pl.col("technique") == "kd+int8+ah90").row(0, named=True)
    assert row["fingerprint"] == variant.fingerprint
    assert json.loads(row["protocol"])["dataset"] == "wikitext-2-raw-v1/test"
    assert json.loads(row["hardware"])
    corpus = project["instance"].get_latest_materialization_event(dg.AssetKey("eval_corpus"))
    assert row["corpus_sha256"] == corpus.asset_materialization.metadata["text_sha256"].value
    assert row["code_version"] == perplexity_run.code_versions_by_key[perplexity_run.key]


def test_comparison_rows_pair_both_arms_with_their_lineage_and_calibration(project: dict) -> None:
    store = ModelStore(Path(project["root"]) / "store")
    tables = Path(project["root"]) / "tables" / "comparison_run"
    control = pl.read_parquet(tables / f"{MODEL}__base.parquet")
    base = store.manifest(MODEL, "base")
    # The A/A control: two loads of the same base artifact.
    assert set(control["base_fingerprint"]) == set(control["variant_fingerprint"]) == {base.fingerprint}
    variant = pl.read_parquet(tables / f"{MODEL}__nf4+ah80.parquet")
    assert set(variant["base_fingerprint"]) == {base.fingerprint}
    assert set(variant["variant_fingerprint"]) == {store.manifest(MODEL, "nf4+ah80").fingerprint}
    assert sorted(zip(variant["pair"], variant["arm"])) == [(p, a) for p in range(4) for a in ("base", "variant")]
    assert sorted(variant["position"].to_list()) == list(range(8))
    calibration = json.loads(variant["calibration"][0])
    assert calibration["rounds"] and calibration["units"] == variant["units_per_repetition"][0]
    assert variant["tokens_per_repetition"][0] == calibration["units"] * json.loads(variant["protocol"][0])["max_length"]
    last = calibration["rounds"][-1]  # the calibrated length held in the last warm-up round
    assert last["units"] == calibration["units"]
    assert min(last["base_seconds"], last["variant_seconds"]) >= 0.02 or not calibration["reached_minimum"]
    assert json.loads(variant["comparison_protocol"][0])["pairs"] == 4
    assert variant["joules"].null_count() == 0 and json.loads(variant["hardware"][0])


def test_unknown_model_fails_clearly(project: dict) -> None:
    instance = project["instance"]
    instance.add_dynamic_partitions("model", ["gpt5"])
    result = dg.materialize([base_model], partition_key="gpt5", resources=project["resources"],
                            instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "unknown model 'gpt5'" in failure.step_failure_data.error.to_string()
    assert not (Path(project["root"]) / "store" / "gpt5").exists()


@pytest.mark.parametrize(
    "error,expected",
    [(FloatingPointError("non-finite loss (nan) in window [0, 128)"), "non-finite loss"),
     (MemoryError("cannot allocate 1.6 GB"), "Out of memory: lower the profile's max_length")],
)
def test_a_failing_repetition_leaves_earlier_measurements_intact(
    project: dict, monkeypatch, error: Exception, expected: str
) -> None:
    import llmopt_assets.measure.runs as runs

    table = Path(project["root"]) / "tables" / "perplexity_run" / f"{MODEL}__base.parquet"
    before = table.read_bytes()
    calls = {"n": 0}
    real = runs.evaluate_perplexity

    def nan_on_third_call(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # no warm-up: the first call is repetition 0, the second repetition 1
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "evaluate_perplexity", nan_on_third_call)
    key = dg.MultiPartitionKey({"model": MODEL, "technique": "base"})
    result = dg.materialize([compressed_variant, perplexity_run], partition_key=key, resources=project["resources"],
                            instance=project["instance"], selection=[perplexity_run], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.to_string() + str(failure.step_failure_data.user_failure_data)
    assert "repetition failed after 1 completed" in message and expected in message
    assert table.read_bytes() == before  # the previous materialization is untouched



def test_the_energy_meter_is_closed_even_when_a_repetition_fails(project: dict, monkeypatch) -> None:
    import llmopt_assets.measure.runs as runs
    from llmopt_assets.measure.energy.cpu_time import CpuTimeMeter

    closed = []
    monkeypatch.setattr(CpuTimeMeter, "close", lambda self: closed.append(self), raising=False)
    monkeypatch.setattr(runs, "evaluate_perplexity", lambda *args, **kwargs: 1 / 0)
    key = dg.MultiPartitionKey({"model": MODEL, "technique": "base"})
    result = dg.materialize([compressed_variant, perplexity_run], partition_key=key, resources=project["resources"],
                            instance=project["instance"], selection=[perplexity_run], raise_on_error=False)
    assert not result.success
    assert len(closed) == 1


def test_a_check_that_does_not_apply_is_skipped_not_passed(project: dict) -> None:
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    evaluated = {c.check_name for c in project["results"]["int8"].get_asset_check_evaluations()}
    assert evaluated == {"modules_really_quantized", "perplexity_plausible"}
    # The UI resolves a planned check whose run succeeded without a result as SKIPPED.
    key = dg.AssetCheckKey(dg.AssetKey("compressed_variant"), "exact_n_m_sparsity")
    history = project["instance"].event_log_storage.get_asset_check_execution_history(key, limit=20)
    int8_run = project["results"]["int8"].run_id
    (record,) = [r for r in history if r.run_id == int8_run]
    assert record.status == AssetCheckExecutionRecordStatus.PLANNED
    assert project["instance"].get_run_by_id(int8_run).status == dg.DagsterRunStatus.SUCCESS
    sparse = {c.check_name: c.passed for c in project["results"]["sparsegpt-2:4"].get_asset_check_evaluations()}
    assert sparse["exact_n_m_sparsity"] is True


def test_a_variant_sharing_weights_says_whose(project: dict) -> None:
    materialization = project["results"]["int8"].asset_materializations_for_node("compressed_variant")[0]
    assert materialization.metadata["bytes_on_disk"].value == 0
    assert materialization.metadata["weights_shared_with"].value.startswith(f"{MODEL}/base:")


def test_a_model_over_the_memory_budget_is_refused_before_loading(project: dict, monkeypatch) -> None:
    import llmopt_assets.defs.measurement.assets as measurement

    def no_load(*args, **kwargs):
        raise AssertionError("weights were read although the budget was too small")

    monkeypatch.setattr(measurement, "load_variant", no_load)
    resources = {**project["resources"], "compute": ComputeResource(threads=1, memory_budget_gb=1e-6)}
    key = dg.MultiPartitionKey({"model": MODEL, "technique": "base"})
    result = dg.materialize([compressed_variant, perplexity_run], partition_key=key, resources=resources,
                            instance=project["instance"], selection=[perplexity_run], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "memory budget is 0.00 GiB" in failure.step_failure_data.error.to_string()


def test_opt_scores_table_metadata_is_rounded_with_a_schema(project: dict) -> None:
    materialization = project["scoring"].asset_materializations_for_node("opt_scores")[0]
    table = materialization.metadata["scores"]
    assert isinstance(table, dg.TableMetadataValue)
    names = [c.name for c in table.schema.columns]
    assert names[:4] == ["model", "technique", "perplexity", "Pc"]
    assert all(c.description for c in table.schema.columns)
    rows = {r.data["technique"]: r.data for r in table.records}
    assert set(rows) == set(TECHNIQUES)
    assert rows["base"]["Pc"] == 1.0  # the base's Tc is its A/A control: near 1, not 1 by construction
    assert rows["base"]["A/A control"] in ("passed", "failed")
    for row in rows.values():
        for name in ("Pc", "Tc", "Ec", "opt balanced"):
            assert row[name] is None or row[name] == round(row[name], 3)  # missing stays None
        assert row["Tc 95% CI"] is None or row["Tc 95% CI"].startswith("[")


def test_lineage_names_the_weights_text_code_and_runs_of_a_result(project: dict, capsys) -> None:
    from llmopt_assets.cli.lineage import main

    root = Path(project["root"])
    paths = ["--store", str(root / "store"), "--tables", str(root / "tables")]
    assert main([MODEL, "kd+int8+ah90", *paths]) == 0
    out = capsys.readouterr().out
    store = ModelStore(root / "store")
    variant = store.manifest(MODEL, "kd+int8+ah90")
    chain = [variant, store.manifest_at(store.root / variant.weights_dir), store.manifest(MODEL, "kd"),
             store.manifest(MODEL, "base")]
    positions = [out.index(f"sha256 {manifest.fingerprint}") for manifest in chain]
    assert positions == sorted(positions)  # the variant first, each parent after its child
    assert '"threshold": 0.9' in out and '"samples": 16' in out  # recipe and head-pruning calibration
    rows = pl.read_parquet(root / "tables" / "measurements.parquet").filter(pl.col("technique") == "kd+int8+ah90")
    for run_id in set(rows["run_id"].to_list()):
        assert f"run {run_id}" in out
    corpus = project["instance"].get_latest_materialization_event(dg.AssetKey("eval_corpus"))
    assert f"text sha256 {corpus.asset_materialization.metadata['text_sha256'].value}" in out
    assert f"code version {perplexity_run.code_versions_by_key[perplexity_run.key]}" in out
    assert "warnings" not in out
    scores = pl.read_parquet(root / "tables" / "opt_scores.parquet")
    row = scores["technique"].to_list().index("kd+int8+ah90")
    assert main(["--row", str(row), *paths]) == 0
    assert capsys.readouterr().out == out
    assert main([MODEL, "kd+nf4", *paths]) == 2
    assert "materialize it first" in capsys.readouterr().err
