"""The project's whole asset graph over a tiny model's store, for the browser test: the webserver
loads this module as its code location, and reads where the store is from the environment."""

import os
from pathlib import Path

import dagster as dg
from dagster_shared.record import replace

import llmopt_assets.definitions as project
from llmopt_assets_tests.celery_job import ROOT_VARIABLE, tiny_resources


@dg.definitions
def defs() -> dg.Definitions:
    root = Path(os.environ.get(ROOT_VARIABLE, "/nonexistent-llmopt-ui-test-root"))
    # Every asset, check, job and sensor of the project; only the resources point at the tiny store.
    return replace(project.defs(), resources=tiny_resources(root))
