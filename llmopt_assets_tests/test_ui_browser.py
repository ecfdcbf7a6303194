"""The Dagster UI as a user meets it, driven in Debian's chromium (headless, Playwright): the
webserver on loopback over a tiny model's instance; the asset graph; one partition of
perplexity_run materialized from the UI with the Materialize button and the partition dialog; that
partition's page (status, perplexity); its check; the opt-score table rendered without a click.
Screenshots go to $LLMOPT_UI_SCREENSHOTS (default: the test's tmp dir). Everything started here is
stopped by its process group, whatever happens."""

import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.error import URLError
from urllib.parse import quote
from urllib.request import Request, urlopen

import dagster as dg
import polars as pl
import pytest

from llmopt_assets.defs.benchmarks.assets import benchmark_run
from llmopt_assets.defs.measurement.assets import comparison_run, measurements, perplexity_run
from llmopt_assets.defs.models.assets import compressed_variant
from llmopt_assets.defs.scoring.assets import opt_scores, trade_off_charts
from llmopt_assets_tests.celery_job import ROOT_VARIABLE, prepare_assets, tiny_resources
from llmopt_assets_tests.processes import free_port, start, stop, wait_until, write_tiny_llama

MODEL = "tiny-llama"
UI_TECHNIQUE = "int8"  # materialized from the UI; base is prepared beforehand (Pc, Tc need it)
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
IN_CI = os.environ.get("LLMOPT_CI") == "1"  # set by .ci/run: there a missing browser is a failure
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
LOCATION_QUERY = (
    "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus"
    " locationOrLoadError { __typename ... on PythonError { message } } } } } }"
)


def _require_browser():
    """Playwright's sync API and Debian's chromium, or a clear failure in CI (a skip elsewhere)."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright package (pip install playwright; it is in the test extras)")
        sync_playwright = None
    if not Path(CHROMIUM).is_file():
        missing.append(f"chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run does)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


def _instance_home(home: Path) -> None:
    # The default run coordinator: a run launched from the UI starts at once, without a daemon.
    # No "Join the Dagster community" modal: it opens a second after a page loads, and dismissing it
    # over an open partition menu closes the menu under the click (a CI failure).
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )


def _location_loaded(url: str) -> bool:
    request = Request(f"{url}/graphql", data=json.dumps({"query": LOCATION_QUERY}).encode(),
                      headers={"Content-Type": "application/json"})
    try:
        with urlopen(request, timeout=10) as answer:
            reply = json.load(answer)
    except (URLError, OSError, ValueError):
        return False
    entries = reply["data"]["workspaceOrError"]["locationEntries"]
    for entry in entries:
        loaded = entry["locationOrLoadError"]
        if loaded and loaded["__typename"] == "PythonError":
            raise RuntimeError(f"code location {entry['name']} failed to load: {loaded['message']}")
    return bool(entries) and all(e["loadStatus"] == "LOADED" and e["locationOrLoadError"] for e in entries)


def _ui_run(instance: dg.DagsterInstance, since: datetime, seconds: float) -> dg.DagsterRun:
    """The run the UI launched for the partition, once it has finished."""
    partition = f"{MODEL}|{UI_TECHNIQUE}"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        records = instance.get_run_records(
            filters=dg.RunsFilter(tags={"dagster/partition": partition}, created_after=since), limit=5
        )
        runs = [r.dagster_run for r in records]
        if len(runs) > 1:
            raise AssertionError(f"the UI launched {len(runs)} runs for {partition}, expected one")
        if runs and runs[0].status in FINISHED:
            return runs[0]
        time.sleep(1)
    raise TimeoutError(f"no finished run for {partition} {seconds:.0f} s after the UI launched it")


@pytest.mark.timeout(600)
def test_a_user_materializes_a_partition_from_the_ui_and_reads_the_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync_playwright = _require_browser()
    from playwright.sync_api import expect

    expect.set_options(timeout=90_000)  # a loaded 2-core machine: the UI can take long to answer

    began = time.monotonic()
    shots = Path(os.environ.get("LLMOPT_UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    home, root = tmp_path / "dagster_home", tmp_path / "project"
    _instance_home(home)
    root.mkdir()
    write_tiny_llama(root, MODEL)
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: llmopt_assets_tests.ui_definitions\n"
        f"      location_name: llmopt_assets\n      working_directory: {PROJECT_ROOT}\n"
    )
    env = {**os.environ, "DAGSTER_HOME": str(home), ROOT_VARIABLE: str(root), "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    webserver = Path(sys.executable).with_name("dagster-webserver")
    resources = tiny_resources(root)
    started = []
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    try:
        with dg.DagsterInstance.get() as instance:
            # The instance's storage exists before the webserver opens it (two first openings race).
            instance.add_dynamic_partitions("model", [MODEL])
            # The webserver loads the code location while this process prepares the upstream assets.
            started.append(start([str(webserver), "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)],
                                 tmp_path / "webserver.log", env=env, cwd=PROJECT_ROOT))
            assert dg.materialize(prepare_assets(), partition_key=MODEL, resources=resources, instance=instance).success
            variant = [compressed_variant, perplexity_run, comparison_run]
            for technique, selection in (("base", variant), (UI_TECHNIQUE, [compressed_variant, comparison_run])):
                key = dg.MultiPartitionKey({"model": MODEL, "technique": technique})
                assert dg.materialize(variant, partition_key=key, resources=resources, instance=instance,
                                      selection=selection).success
            wait_until(lambda: _location_loaded(url), 240, "dagster-webserver and its code location", started)
            print(f"ui test: prepared and webserver ready after {time.monotonic() - began:.0f} s")

            with sync_playwright() as playwright:
                # As root (CI) chromium needs --no-sandbox; a container's small /dev/shm crashes it.
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
                try:
                    page = browser.new_page(viewport={"width": 1500, "height": 950})
                    page.set_default_timeout(90_000)
                    page.set_default_navigation_timeout(120_000)
                    # The browser's own record of the modal dismissed (Dagster reads both it and the instance's).
                    page.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
                    # Should a Dagster version still show the modal over what we click: skip it.
                    community = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
                    page.add_locator_handler(community, lambda d: d.get_by_role("button", name="Skip").click())

                    def screenshot(name: str) -> None:
                        if community.is_visible():
                            community.get_by_role("button", name="Skip").click()
                        page.screenshot(path=str(shots / f"{name}.png"))

                    # The asset graph (the measurement group, its neighbours linked), by name.
                    page.goto(f"{url}/locations/llmopt_assets/asset-groups/measurement/lineage")
                    for name in ("compressed_variant", "perplexity_run", "comparison_run", "measurements",
                                 "opt_scores"):
                        expect(page.get_by_text(name, exact=True).first).to_be_visible()
                    screenshot("ui-asset-graph")

                    # Materialize one partition as a user does: the button, one model, one technique.
                    page.goto(f"{url}/assets/perplexity_run")
                    page.get_by_role("button", name="Materialize…").click()
                    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize perplexity_run")
                    expect(dialog).to_be_visible()
                    for dimension, key in (("model", MODEL), ("technique", UI_TECHNIQUE)):
                        dialog.get_by_text("Select a partition or create one").first.click()
                        page.get_by_role("textbox", name="Filter partitions").fill(key)
                        page.get_by_role("menuitem", name=f"{key} {key}", exact=True).click()
                        dialog.get_by_text("Launch runs to materialize perplexity_run").click()  # closes the menu
                    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
                    screenshot("ui-launch-one-partition")
                    launched = datetime.now(timezone.utc)
                    dialog.get_by_role("button", name="Launch 1 run").click()
                    expect(dialog).to_be_hidden()
                    run = _ui_run(instance, launched, 300)
                    assert run.status == dg.DagsterRunStatus.SUCCESS, f"the UI's run {run.run_id} ended {run.status}"
                    assert run.asset_selection == {dg.AssetKey("perplexity_run")}
                    page.goto(f"{url}/runs/{run.run_id}")
                    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
                    expect(page.get_by_text(f"partition: {MODEL}|{UI_TECHNIQUE}").first).to_be_visible()
                    expect(page.get_by_text("RUN_SUCCESS").first).to_be_visible()  # its event log has loaded
                    screenshot("ui-launched-run-succeeded")

                    # That partition's page: its key, status and the perplexity the run measured.
                    measured = pl.read_parquet(root / "tables" / "perplexity_run" / f"{MODEL}__{UI_TECHNIQUE}.parquet")
                    partition = quote(f"{MODEL}|{UI_TECHNIQUE}")
                    page.goto(f"{url}/assets/perplexity_run?view=partitions&partition={partition}")
                    expect(page.get_by_text(f"{MODEL}|{UI_TECHNIQUE}", exact=True).first).to_be_visible()
                    expect(page.get_by_text("Materialized", exact=True).first).to_be_visible()
                    perplexity_row = page.get_by_role("row").filter(has=page.get_by_text("perplexity", exact=True))
                    shown = float(perplexity_row.first.get_by_role("cell").nth(1).inner_text())  # key, value
                    assert shown == pytest.approx(measured["perplexity"][0], rel=1e-3)
                    screenshot("ui-perplexity-partitions")

                    # Its check, described, with a result a user can read.
                    page.goto(f"{url}/assets/perplexity_run?view=checks")
                    expect(page.get_by_text("perplexity_plausible").first).to_be_visible()
                    expect(page.get_by_text("Passed", exact=True).first).to_be_visible()
                    screenshot("ui-check")

                    # The scores over both variants: table rows on the page, no click needed.
                    assert dg.materialize(
                        [measurements, opt_scores, trade_off_charts, perplexity_run, comparison_run, benchmark_run],
                        resources=resources, instance=instance, selection=[measurements, opt_scores, trade_off_charts],
                    ).success
                    page.goto(f"{url}/assets/opt_scores")
                    scores = page.get_by_role("table").filter(has_text="opt balanced").last
                    for technique in ("base", UI_TECHNIQUE):
                        row = scores.get_by_role("row").filter(has=page.get_by_role("cell", name=technique, exact=True))
                        expect(row).to_have_count(1)
                        expect(row.get_by_role("cell", name=MODEL, exact=True)).to_be_visible()
                    # Readable rows: no cell wraps a row taller than a few lines.
                    heights = [row.bounding_box()["height"] for row in scores.get_by_role("row").all()]
                    assert max(heights) < 100, f"opt table rows {heights} px tall"
                    scores.scroll_into_view_if_needed()
                    screenshot("ui-opt-table")

                    # A chart opens whole in the metadata pop-up: as wide as it, Close in the window.
                    page.goto(f"{url}/assets/trade_off_charts")
                    entry = f"{MODEL}: opt per preset"
                    page.get_by_role("row").filter(has=page.get_by_role("cell", name=entry, exact=True)).get_by_text(
                        "[Show Markdown]").click()
                    popup = page.get_by_role("dialog").filter(has_text=entry)
                    chart = popup.locator("img").last
                    expect(chart).to_be_visible()
                    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=chart.element_handle())
                    chart_box, popup_box = chart.bounding_box(), popup.bounding_box()
                    assert chart_box["x"] >= popup_box["x"] and (chart_box["x"] + chart_box["width"]
                                                                <= popup_box["x"] + popup_box["width"])
                    expect(popup.get_by_role("button", name="Close")).to_be_in_viewport()
                    screenshot("ui-chart-popup")
                finally:
                    browser.close()
    finally:
        for process in reversed(started):
            stop(process)
        for process in started:
            assert process.poll() is not None, f"{process.args[0]} (pid {process.pid}) still running"
    print(f"ui test: {time.monotonic() - began:.0f} s, screenshots in {shots}")
