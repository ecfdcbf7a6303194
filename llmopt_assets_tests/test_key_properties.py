"""Property tests (hypothesis): any string is a valid technique / partition key or a clear error,
never a crash, and never a path outside the store, the tables or the reports."""

from pathlib import Path

import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmopt_assets.defs.resources import PolarsParquetIOManager
from llmopt_assets.models.keys import (
    MODEL_SLUG,
    TECHNIQUE_KEY,
    InvalidKeyError,
    check_model_slug,
    partition_file_stem,
)
from llmopt_assets.models.store import ModelStore
from llmopt_assets.techniques.recipe import FAMILIES, RecipeError, parse, technique_keys

ROOT = Path("/nonexistent/var")  # mapping keys to paths touches no disk
PARTS = sorted({key for family in FAMILIES.values() for key in family} | {"base", "4bit", "8bit"})
# Strings near the valid ones (path tricks, separators, case, whitespace), and any text at all.
NEAR = st.lists(st.sampled_from([*PARTS, "+", "/", "..", ".", "|", "_", "__", " ", "\n", "A", "\x00", ""]),
                max_size=6).map("".join)
ANY_TEXT = st.one_of(st.text(max_size=40), NEAR)
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _store_paths(model: str, technique: str) -> list[Path]:
    store = ModelStore(ROOT / "store")
    return [store.artifact_dir(model, technique), store.lock_path(model, technique),
            store.corpus_path(model, technique)]


@PROPERTY
@given(ANY_TEXT)
def test_the_recipe_parser_gives_a_canonical_key_or_a_recipe_error(text: str) -> None:
    try:
        recipe = parse(text)
    except RecipeError as error:
        assert str(error)
        return
    # Reference: a parsed key is canonical, path-safe and parses to itself.
    assert TECHNIQUE_KEY.fullmatch(recipe.key)
    assert parse(recipe.key) == recipe
    assert len(recipe.steps) == len({s["step"] for s in recipe.steps})  # one step per family


@PROPERTY
@given(ANY_TEXT, ANY_TEXT)
def test_any_model_and_technique_map_inside_the_store_or_are_refused(model: str, technique: str) -> None:
    try:
        paths = _store_paths(model, technique)
    except InvalidKeyError as error:
        assert "key" in str(error)
        return
    for path in paths:
        relative = path.relative_to(ROOT / "store")  # raises if outside
        assert ".." not in relative.parts and relative.parts[0] in (model, ".locks")


@PROPERTY
@given(ANY_TEXT, ANY_TEXT)
def test_any_partition_key_maps_to_one_table_file_inside_the_tables_or_is_refused(model: str, technique: str) -> None:
    manager = PolarsParquetIOManager(root=str(ROOT / "tables"))
    key = dg.MultiPartitionKey({"model": model, "technique": technique}) if model and technique else model
    try:
        path = manager._path(dg.AssetKey("perplexity_run"), key)
    except (InvalidKeyError, dg.DagsterInvalidDefinitionError) as error:
        assert str(error)
        return
    assert path.parent == ROOT / "tables" / "perplexity_run"
    assert path.name == partition_file_stem(str(key)) + ".parquet"


VALID_PART = st.from_regex(MODEL_SLUG, fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(st.tuples(VALID_PART, st.sampled_from(technique_keys())), st.tuples(VALID_PART, st.sampled_from(technique_keys())))
def test_distinct_partitions_never_share_a_table_file(first: tuple[str, str], second: tuple[str, str]) -> None:
    if first != second:
        assert partition_file_stem("|".join(first)) != partition_file_stem("|".join(second))


@PROPERTY
@given(ANY_TEXT)
def test_a_chart_file_name_comes_from_a_slug_only(model: str) -> None:
    try:
        slug = check_model_slug(model)
    except InvalidKeyError:
        return
    assert (ROOT / "reports" / f"{slug}-trade-offs.png").parent == ROOT / "reports"


@pytest.mark.parametrize("key", ["../../x", "..", "", "a/b", "gpt2|../x", "gpt2\n", "a__b|int8"])
def test_known_bad_keys_are_refused_by_the_table_io_manager(key: str) -> None:
    with pytest.raises(InvalidKeyError, match="cannot name a file"):
        PolarsParquetIOManager(root=str(ROOT / "tables"))._path(dg.AssetKey("perplexity_run"), key)
