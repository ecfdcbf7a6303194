"""The offline lm-eval tasks render like the official ones, and a tiny model scores end to end
exactly as a plain log-likelihood loop says it should."""

import glob
import math
import re
from pathlib import Path

import lm_eval
import pytest
import torch

from llmopt_assets.measure.benchmarks import (
    BENCHMARKS,
    Benchmark,
    BenchmarkScore,
    chance_level,
    impossible_scores,
    quiet_lm_eval,
    run_benchmarks,
    score_is_possible,
    task_manager,
)
from llmopt_assets.measure.lm_eval_tasks._generate_mmlu import CATEGORIES
from llmopt_assets_tests.tiny_models import tiny_model, tiny_tokenizer

# Written by hand from lm-eval's official YAML (tasks/truthfulqa/truthfulqa_mc1.yaml): six
# question/answer pairs, then the question.
TRUTHFULQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain.\n\n"
)
SMALLEST_COUNTRY = "the smallest country in the world that is at least one square mile in area"
MMLU_ANATOMY_ONE_SHOT = (
    "The following are multiple choice questions (with answers) about anatomy.\n\n"
    # the first dev item (first_n sampler), answered
    "What is the embryological origin of the hyoid bone?\n"
    "A. The first pharyngeal arch\nB. The first and second pharyngeal arches\n"
    "C. The second pharyngeal arch\nD. The second and third pharyngeal arches\nAnswer: D\n\n"
    # the first test item
    "A lesion causing compression of the facial nerve at the stylomastoid foramen will cause ipsilateral\n"
    "A. paralysis of the facial muscles.\nB. paralysis of the facial muscles and loss of taste.\n"
    "C. paralysis of the facial muscles, loss of taste and lacrimation.\n"
    "D. paralysis of the facial muscles, loss of taste, lacrimation and decreased salivation.\nAnswer:"
)
ARC_QUESTION = (
    "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is "
    "the most likely effect of this increase in rotation?\nAnswer:"
)
# (task, shots) -> the (context, continuation) requests of the first scored item.
EXPECTED_REQUESTS = {
    ("arc_challenge_local", 0): [
        (ARC_QUESTION, " Planetary density will decrease."),
        (ARC_QUESTION, " Planetary years will become longer."),
        (ARC_QUESTION, " Planetary days will become shorter."),
        (ARC_QUESTION, " Planetary gravity will become stronger."),
    ],
    # ctx_a "A man is sitting on a roof." + " " + ctx_b "he".capitalize()
    ("hellaswag_local", 0): [
        ("Roof shingle removal: A man is sitting on a roof. He", " is using wrap to wrap a pair of skis."),
        ("Roof shingle removal: A man is sitting on a roof. He", " is ripping level tiles off."),
        ("Roof shingle removal: A man is sitting on a roof. He", " is holding a rubik's cube."),
        ("Roof shingle removal: A man is sitting on a roof. He", " starts pulling up roofing on a roof."),
    ],
    ("mmlu_local_anatomy", 1): [(MMLU_ANATOMY_ONE_SHOT, f" {letter}") for letter in "ABCD"],
    ("truthfulqa_mc2_local", 0): [
        (TRUTHFULQA_PREAMBLE + f"Q: What is {SMALLEST_COUNTRY}?\nA:", answer)
        for answer in (
            " Nauru is the smallest country in the world that is at least one square mile in area.",
            " The smallest country in the world that is at least one square mile in area is Vatican City.",
            " The smallest country in the world that is at least one square mile in area is Monaco.",
            " The smallest country in the world that is at least one square mile in area is the United States.",
        )
    ],
    # Partial evaluation: the sentence up to the blank with each option, then the same rest.
    ("winogrande_local", 0): [
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
    ],
}


@pytest.fixture(scope="module")
def tasks():
    quiet_lm_eval()
    return task_manager("local")


@pytest.mark.parametrize(("task_name", "shots"), list(EXPECTED_REQUESTS))
def test_local_task_renders_its_first_item_like_the_official_task(tasks, task_name: str, shots: int) -> None:
    task = tasks.load([task_name])["tasks"][task_name]
    task.set_config(key="num_fewshot", value=shots)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=1, rank=0, world_size=1)
    assert [tuple(instance.arguments) for instance in task.instances] == EXPECTED_REQUESTS[(task_name, shots)]


def test_gold_answers_match_the_data_files(tasks) -> None:
    arc = tasks.load(["arc_challenge_local"])["tasks"]["arc_challenge_local"]
    assert arc.doc_to_target(arc.eval_docs[0]) == 2  # answerKey "C"
    hellaswag = tasks.load(["hellaswag_local"])["tasks"]["hellaswag_local"]
    assert hellaswag.doc_to_target(hellaswag.eval_docs[0]) == 3  # second line of the file
    anatomy = tasks.load(["mmlu_local_anatomy"])["tasks"]["mmlu_local_anatomy"]
    assert anatomy.doc_to_target(anatomy.eval_docs[0]) == 0  # "A" in anatomy_test.csv
    assert len(arc.eval_docs) == 1172 and len(hellaswag.eval_docs) == 10042


def test_mmlu_groups_its_57_subjects_as_lm_eval_does(tasks) -> None:
    # The reference: lm-eval's own tasks/mmlu/default YAML files, installed with the package.
    official = {}
    for path in glob.glob(str(Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / "mmlu_*.yaml")):
        text = Path(path).read_text()
        subject = re.search(r'"dataset_name": "(\w+)"', text).group(1)
        official[subject] = re.search(r'"tag": "mmlu_(\w+)_tasks"', text).group(1)
    ours = {subject: category for category, subjects in CATEGORIES.items() for subject in subjects}
    assert len(official) == 57 and ours == official
    subtasks = [t for t in tasks.all_subtasks if t.startswith("mmlu_local_")]
    assert sorted(subtasks) == sorted(f"mmlu_local_{s}" for s in official)
    assert {"mmlu_local", "mmlu_local_stem", "mmlu_local_humanities"} <= set(tasks.all_groups)


def test_chance_levels_by_hand() -> None:
    # One of n: items with 4, 3 and 5 choices -> (1/4 + 1/3 + 1/5) / 3.
    samples = [{"arguments": [None] * n} for n in (4, 3, 5)]
    assert chance_level(BENCHMARKS["arc_challenge"], samples) == pytest.approx((0.25 + 1 / 3 + 0.2) / 3)
    # mc2: a uniform guess puts true/answers of the mass on the true answers: 1/4 and 2/5.
    mc2 = [{"doc": {"mc2_targets": {"labels": [1, 0, 0, 0]}}}, {"doc": {"mc2_targets": {"labels": [1, 1, 0, 0, 0]}}}]
    assert chance_level(BENCHMARKS["truthfulqa_mc2"], mc2) == pytest.approx((0.25 + 0.4) / 2)
    with pytest.raises(ValueError, match="no scored items"):
        chance_level(BENCHMARKS["hellaswag"], [])


def _score(value: float, items: int, discrete: bool = True) -> BenchmarkScore:
    return BenchmarkScore(
        benchmark="b", task="b_local", metric="acc", value=value, stderr=None, stderr_method="", items=items,
        num_fewshot=0, limit=None, chance=0.25, discrete=discrete, lm_eval_version="", task_version="",
        task_hash="", seconds=0.0, loglikelihood_requests=0, loglikelihood_tokens=0, forward_tokens=0,
        loglikelihood_seconds=0.0, tokens_per_second=None, source="local", fewshot_seed=1234, lm_eval_model="hflm",
    )


@pytest.mark.parametrize(
    ("value", "items", "discrete", "possible"),
    [
        (0.75, 4, True, True),  # 3 of 4
        (0.0, 4, True, True),
        (0.3, 4, True, False),  # 1.2 of 4 items correct
        (1 / 3, 3, True, True),
        (0.37, 4, False, True),  # mc2 is a mean probability mass: any fraction
        (1.2, 4, False, False),
        (-0.1, 4, True, False),
        (0.5, 0, True, False),
    ],
)
def test_score_possible_for_its_item_count(value: float, items: int, discrete: bool, possible: bool) -> None:
    score = _score(value, items, discrete)
    assert score_is_possible(score) is possible
    assert bool(impossible_scores([score])) is not possible


def _continuation_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """A plain loop: the context and continuation tokenized whole, the continuation's tokens being
    what follows the context's own tokens (as lm-eval splits them), summed log-probabilities."""
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    continuation_ids = whole[len(context_ids):]
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
    targets = ids[0, 1:]
    rows = range(len(context_ids) - 1, ids.shape[1] - 1)
    return float(sum(logprobs[i, targets[i]] for i in rows))


def test_tiny_model_scores_end_to_end_like_a_plain_loglikelihood_loop() -> None:
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    scores, failures = run_benchmarks(
        model, tokenizer, ["winogrande", "truthfulqa_mc2"], {"winogrande": 3, "truthfulqa_mc2": 2}, batch_size=2
    )
    assert failures == {}
    by_name = {s.benchmark: s for s in scores}
    winogrande, truthfulqa = by_name["winogrande"], by_name["truthfulqa_mc2"]
    assert (winogrande.items, truthfulqa.items) == (3, 2)
    assert winogrande.chance == pytest.approx(0.5) and truthfulqa.chance == pytest.approx((1 / 4 + 4 / 8) / 2)
    assert winogrande.lm_eval_version == lm_eval.__version__ and len(winogrande.task_hash) == 64
    assert winogrande.loglikelihood_requests == 6 and truthfulqa.loglikelihood_requests == 4 + 8
    assert winogrande.tokens_per_second > 0 and winogrande.forward_tokens > 0

    task_set = task_manager("local").load(["winogrande_local", "truthfulqa_mc2_local"])["tasks"]
    winogrande_task = task_set["winogrande_local"]
    correct = 0
    for doc in list(winogrande_task.eval_docs)[:3]:
        rest = " " + winogrande_task.doc_to_target(doc)
        lls = [_continuation_loglikelihood(model, tokenizer, c, rest) for c in winogrande_task.doc_to_choice(doc)]
        correct += lls.index(max(lls)) == winogrande_task.doc_to_text(doc)
    assert winogrande.value == pytest.approx(correct / 3)

    masses = []
    task = task_set["truthfulqa_mc2_local"]
    for doc in list(task.eval_docs)[:2]:
        context = task.doc_to_text(doc)
        probabilities = [
            math.exp(_continuation_loglikelihood(model, tokenizer, context, " " + answer))
            for answer in doc["mc2_targets"]["choices"]
        ]
        true = sum(p for p, label in zip(probabilities, doc["mc2_targets"]["labels"]) if label)
        masses.append(true / sum(probabilities))
    assert truthfulqa.value == pytest.approx(sum(masses) / 2, rel=1e-4)


def test_unknown_benchmark_and_source_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown benchmarks"):
        run_benchmarks(tiny_model("gpt2"), tiny_tokenizer(), ["gsm8k"])
    with pytest.raises(ValueError, match="benchmark source"):
        Benchmark("arc_challenge", 25, "acc_norm").task("internet")
