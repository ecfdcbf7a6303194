"""The `llmopt` command and the demo's runs: created through the code location (so the UI lists
them under their job), one line per failure, later runs not stopped by an earlier failure."""

import json
import subprocess
import sys

import dagster as dg
import pytest
from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

from llmopt_assets.cli import demo
from llmopt_assets.cli.__main__ import main as llmopt
from llmopt_assets.cli.runs import ProjectRuns
from llmopt_assets.paths import PROJECT_ROOT
from llmopt_assets_tests.tiny_models import tiny_model, tiny_tokenizer


def test_llmopt_lists_commands_and_refuses_unknown_ones(capsys):
    assert llmopt(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert llmopt(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


def test_demo_builds_only_the_students_its_techniques_need():
    assert demo.students_needed(["base", "int8", "nf4+ah90"]) == []
    assert demo.students_needed(["base", "kd+int8", "kd"]) == ["kd"]
    assert demo.students_needed(["kd-rkl", "kd+ah80"]) == ["kd", "kd-rkl"]


def test_demo_refuses_an_unknown_model_before_touching_the_instance(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "llmopt_assets.cli", "demo", "--model", "../evil", "--techniques", "base"],
        capture_output=True, text=True, env={"DAGSTER_HOME": str(home), "PATH": "/usr/bin:/bin"},
        cwd=PROJECT_ROOT, timeout=120,
    )
    assert done.returncode == 2
    assert "unknown model '../evil'" in done.stderr
    assert not any(home.iterdir())  # no instance storage was created: nothing to clean up


def test_demo_refuses_unknown_techniques(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--techniques", "base,int9"])
    assert exit_info.value.code == 2
    assert "unknown technique 'int9'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-project")
    weights = root / "weights"
    tiny_model("llama").save_pretrained(weights)
    tiny_tokenizer().save_pretrained(weights)
    registry = root / "models.yaml"
    registry.write_text(f"models:\n  tiny:\n    source: local\n    path: {weights}\n")
    home = root / "home"
    home.mkdir()
    resources = {
        "registry": {"config": {"path": str(registry)}},
        "model_store": {"config": {"root": str(root / "store")}},
        "io_manager": {"config": {"root": str(root / "tables")}},
        "energy_meter": {"config": {"meter": "cpu-time"}},
        "compute": {"config": {"threads": 1}},
    }
    run_config = {"resources": resources, "execution": {"config": {"in_process": {}}}}
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        instance.add_dynamic_partitions("model", ["tiny"])
        with ProjectRuns(instance, PROJECT_ROOT / "workspace.yaml", run_config) as runs:
            # Before the model is prepared its variant cannot be built: a failure, reported in one line.
            early = runs.run("variants_job", dg.MultiPartitionKey({"model": "tiny", "technique": "int8"}))
            yield instance, runs, early


def test_a_failed_run_is_reported_in_one_line_and_the_next_runs_go_on(tiny_project):
    instance, runs, early = tiny_project
    assert not early.success
    assert early.failures and all("\n" not in line for line in early.failures)
    assert any("compressed_variant" in line and "materialize it first" in line for line in early.failures)
    later = runs.run("prepare_models_job", "tiny")
    assert later.success, later.failures


def test_runs_carry_their_code_location_so_the_ui_lists_them_under_their_job(tiny_project):
    instance, runs, _ = tiny_project
    outcome = runs.run("prepare_models_job", "tiny")
    run = instance.get_run_by_id(outcome.run_id)
    assert run.remote_job_origin is not None
    assert run.remote_job_origin.location_name == "llmopt_assets"
    assert run.tags_for_storage()[REPOSITORY_LABEL_TAG] == "__repository__@llmopt_assets"
    assert run.tags["dagster/partition"] == "tiny"
    records = instance.get_run_records(dg.RunsFilter(job_name="prepare_models_job", tags={REPOSITORY_LABEL_TAG: "__repository__@llmopt_assets"}))
    assert outcome.run_id in {r.dagster_run.run_id for r in records}
    variant = runs.run("variants_job", dg.MultiPartitionKey({"model": "tiny", "technique": "base"}))
    assert variant.success, variant.failures
    tags = instance.get_run_by_id(variant.run_id).tags
    assert tags["dagster/partition/model"] == "tiny" and tags["dagster/partition/technique"] == "base"
    assert json.loads(json.dumps(variant.failures)) == []
