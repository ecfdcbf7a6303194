"""Loaders for the offline lm-eval tasks: the files in data/ read with `datasets`' json, csv and
text builders and reshaped into the Hugging Face datasets' schemas, so that every YAML beside this
file keeps the official task's doc_to_text / doc_to_choice / doc_to_target unchanged.

lm-eval calls a task's `custom_dataset` with the task's metadata (where `run_benchmarks` puts
`data_dir`, resolved at run time) and its `dataset_kwargs`.
"""

import json
from pathlib import Path

import datasets

# lm-eval's own helpers for the official tasks, so the local tasks score exactly as they do.
from lm_eval.tasks.hellaswag.utils import preprocess as hellaswag_preprocess
from lm_eval.tasks.truthfulqa.utils import process_results_mc2
from lm_eval.tasks.winogrande.preprocess_winogrande import (
    doc_to_choice as winogrande_doc_to_choice,
    doc_to_target as winogrande_doc_to_target,
    doc_to_text as winogrande_doc_to_text,
)

__all__ = [
    "arc_challenge", "hellaswag", "hellaswag_process_docs", "mmlu", "process_results_mc2",
    "truthfulqa", "winogrande", "winogrande_doc_to_choice", "winogrande_doc_to_target",
    "winogrande_doc_to_text",
]

MMLU_LETTERS = ("A", "B", "C", "D")


def _data_dir(metadata: dict) -> Path:
    if metadata.get("data_dir"):
        return Path(metadata["data_dir"])
    from llmopt_assets.paths import DATA_DIR

    return DATA_DIR


def _files(directory: Path, splits: dict[str, str]) -> dict[str, str]:
    paths = {split: directory / name for split, name in splits.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"benchmark data missing: {', '.join(missing)} (see data/ATTRIBUTION.md)")
    return {split: str(path) for split, path in paths.items()}


def arc_challenge(**metadata) -> datasets.DatasetDict:
    """AI2's original jsonl -> allenai/ai2_arc's schema (question, choices.text/label, answerKey)."""
    files = _files(
        _data_dir(metadata) / "arc_challenge",
        {"train": "ARC-Challenge-Train.jsonl", "validation": "ARC-Challenge-Dev.jsonl",
         "test": "ARC-Challenge-Test.jsonl"},
    )
    raw = datasets.load_dataset("json", data_files=files)

    def reshape(doc: dict) -> dict:
        choices = doc["question"]["choices"]
        return {
            "id": doc["id"],
            "question": doc["question"]["stem"],
            "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
            "answerKey": doc["answerKey"],
        }

    return raw.map(reshape, remove_columns=raw["test"].column_names)


HELLASWAG_LINES_PER_ITEM = 6  # "activity_label: ctx", gold label, 4 endings


def hellaswag(**metadata) -> datasets.DatasetDict:
    """The preprocessed validation text file, 6 lines an item, -> {ctx, endings, label}."""
    files = _files(_data_dir(metadata) / "hellaswag", {"validation": "hellaswag_val_full.txt.bz2"})
    lines = datasets.load_dataset("text", data_files=files)["validation"]["text"]
    if len(lines) % HELLASWAG_LINES_PER_ITEM:
        raise ValueError(f"{files['validation']}: {len(lines)} lines is not a multiple of 6")
    items = [lines[i : i + HELLASWAG_LINES_PER_ITEM] for i in range(0, len(lines), HELLASWAG_LINES_PER_ITEM)]
    return datasets.DatasetDict(
        validation=datasets.Dataset.from_dict(
            {
                "ctx": [item[0] for item in items],
                "label": [item[1] for item in items],
                "endings": [item[2:] for item in items],
            }
        )
    )


def _capitalize_last_fragment(ctx: str) -> str:
    """lm-eval builds the query as ctx_a + ' ' + ctx_b.capitalize(); the file keeps only the
    joined ctx, so the unfinished last sentence (ctx_b) gets its first letter upper-cased."""
    cut = ctx.rfind(". ") + 2 if ". " in ctx else ctx.find(": ") + 2
    return ctx[:cut] + ctx[cut : cut + 1].upper() + ctx[cut + 1 :]


def hellaswag_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    def process(doc: dict) -> dict:
        return {
            "query": hellaswag_preprocess(_capitalize_last_fragment(doc["ctx"])),
            "choices": [hellaswag_preprocess(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(process)


def mmlu(subject: str, **metadata) -> datasets.DatasetDict:
    """hendrycks/test csv (no header: question, A, B, C, D, answer letter) -> cais/mmlu's schema
    (question, subject, choices, answer as an index)."""
    directory = _data_dir(metadata) / "mmlu"
    files = _files(directory, {"dev": f"dev/{subject}_dev.csv", "test": f"test/{subject}_test.csv"})
    columns = ["question", "A", "B", "C", "D", "answer"]
    raw = datasets.load_dataset(
        "csv",
        data_files=files,
        column_names=columns,
        header=None,
        keep_default_na=False,  # an answer text "None" or "NA" stays text
        features=datasets.Features({c: datasets.Value("string") for c in columns}),
    )

    def reshape(doc: dict) -> dict:
        return {
            "question": doc["question"],
            "subject": subject,
            "choices": [doc[letter] for letter in MMLU_LETTERS],
            "answer": MMLU_LETTERS.index(doc["answer"].strip()),
        }

    return raw.map(reshape, remove_columns=columns)


def truthfulqa(**metadata) -> datasets.DatasetDict:
    """mc_task.json ({answer: label} mappings) -> truthfulqa/truthful_qa multiple_choice's schema
    ({choices, labels} lists, in the file's order)."""
    # Read with json, not datasets' json builder: each record's answers are the keys of a
    # mapping, which the builder would turn into columns.
    files = _files(_data_dir(metadata) / "truthfulqa", {"validation": "mc_task.json"})
    records = json.loads(Path(files["validation"]).read_text(encoding="utf-8"))

    def targets(mapping: dict) -> dict:
        return {"choices": list(mapping), "labels": [int(v) for v in mapping.values()]}

    return datasets.DatasetDict(
        validation=datasets.Dataset.from_list(
            [
                {
                    "question": r["question"],
                    "mc1_targets": targets(r["mc1_targets"]),
                    "mc2_targets": targets(r["mc2_targets"]),
                }
                for r in records
            ]
        )
    )


def winogrande(**metadata) -> datasets.DatasetDict:
    """WinoGrande 1.1 jsonl, already in allenai/winogrande's schema (sentence, option1, option2,
    answer '1'/'2'); train is the XS split, validation the dev set."""
    files = _files(
        _data_dir(metadata) / "winogrande", {"train": "train_xs.jsonl", "validation": "dev.jsonl"}
    )
    return datasets.load_dataset("json", data_files=files)
