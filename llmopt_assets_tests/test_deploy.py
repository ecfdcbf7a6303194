"""The cluster path's run config (deploy/k8s/run_config.yaml) is valid for dagster-k8s's executor
over our job, and its GPU requests name steps that exist."""

from pathlib import Path

import dagster as dg
import yaml
from dagster_k8s import k8s_job_executor

from llmopt_assets.definitions import defs

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_k8s_run_config_validates_against_the_executor_schema() -> None:
    project = defs()
    job = dg.define_asset_job(
        "variants_on_k8s", selection=["compressed_variant", "perplexity_run", "comparison_run"],
        executor_def=k8s_job_executor,
    )
    resolved = dg.Definitions.merge(project, dg.Definitions(jobs=[job])).resolve_job_def("variants_on_k8s")
    run_config = yaml.safe_load((DEPLOY / "k8s" / "run_config.yaml").read_text())
    assert dg.validate_run_config(resolved, run_config)
    steps = {node.name for node in resolved.graph.nodes}
    gpu_steps = run_config["execution"]["config"]["per_step_k8s_config"]
    assert set(gpu_steps) - {"distilled_student"} <= steps
    for config in gpu_steps.values():
        assert config["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    broken = {**run_config, "execution": {"config": {"per_step_k8s_config": {"perplexity_run": {"no_such": 1}}}}}
    try:
        dg.validate_run_config(resolved, broken)
    except dg.DagsterInvalidConfigError as error:
        assert "no_such" in str(error)
    else:
        raise AssertionError("a run config with an unknown key validated")
