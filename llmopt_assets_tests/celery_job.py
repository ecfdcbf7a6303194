"""The variants job on the Celery executor over a tiny model's store, for test_celery.py: Celery
workers import this module to rebuild the job, and read where the store is from the environment."""

import os
from pathlib import Path

import dagster as dg
from dagster_celery import celery_executor

from llmopt_assets.defs.data.assets import calibration_corpus, eval_corpus
from llmopt_assets.defs.measurement.assets import comparison_run, perplexity_run
from llmopt_assets.defs.models.assets import base_model, compressed_variant, distilled_student
from llmopt_assets.defs.partitions import variant_partitions
from llmopt_assets.defs.resources import (
    ComputeResource,
    EvaluationProfileResource,
    project_resources,
)

ROOT_VARIABLE = "LLMOPT_CELERY_TEST_ROOT"


def tiny_resources(root: Path) -> dict:
    return project_resources(
        root,
        EvaluationProfileResource(profile="smoke", repetitions=1, pairs=2, min_repetition_seconds=0.01),
        # The GPU executor's resource: on a worker without CUDA it falls back to the CPU and says so.
        ComputeResource(device="cuda", threads=1),
    )


def _definitions() -> dg.Definitions:
    root = Path(os.environ.get(ROOT_VARIABLE, "/nonexistent-llmopt-celery-root"))
    job = dg.define_asset_job(
        "variants_on_celery",
        selection=["compressed_variant", "perplexity_run", "comparison_run"],
        partitions_def=variant_partitions,
        executor_def=celery_executor,
    )
    return dg.Definitions(
        assets=[base_model, eval_corpus, calibration_corpus, distilled_student, compressed_variant, perplexity_run,
                comparison_run],
        resources=tiny_resources(root),
        jobs=[job],
    )


def variants_on_celery() -> dg.JobDefinition:
    return _definitions().resolve_job_def("variants_on_celery")


def prepare_assets() -> list:
    return [base_model, eval_corpus, calibration_corpus]
