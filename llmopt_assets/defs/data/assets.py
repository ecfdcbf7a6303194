"""Evaluation and calibration corpora, tokenized per model."""

import hashlib
from pathlib import Path

import dagster as dg
from transformers import AutoTokenizer

from llmopt_assets.defs.partitions import model_partitions
from llmopt_assets.defs.resources import ComputeResource, EvaluationProfileResource, ModelStoreResource
from llmopt_assets.measure import corpus
from llmopt_assets.techniques.distillation_data import build_distillation_corpus
from llmopt_assets.measure.corpus import (
    EVAL_JOINER,
    WIKITEXT2_RAW_TEST,
    WIKITEXT2_VALID,
    check_corpus_size,
    corpus_text,
    file_text,
    save_tokens,
    tokenize_stream,
)



def _tokenize_to_store(
    context: dg.AssetExecutionContext,
    model_store: ModelStoreResource,
    source: Path,
    corpus: str,
    text: str,
    joiner: str,
) -> dg.MaterializeResult:
    store = model_store.store()
    slug = context.partition_key
    tokenizer_dir = store.weights_path(store.manifest(slug, "base"))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    stream = tokenize_stream(tokenizer, text)
    check_corpus_size(stream, source)
    path = store.corpus_path(slug, corpus)
    text_sha = hashlib.sha256(text.encode()).hexdigest()
    save_tokens(path, stream, {"source": source.name, "joiner": joiner, "text_sha256": text_sha})
    return dg.MaterializeResult(
        metadata={
            "tokens": dg.MetadataValue.int(len(stream)),
            "characters": dg.MetadataValue.int(len(text)),
            "source": dg.MetadataValue.path(str(source)),
            "text_sha256": text_sha,
            "joiner": joiner,
            "path": dg.MetadataValue.path(str(path)),
        },
        data_version=dg.DataVersion(text_sha[:16]),
    )


@dg.asset(
    partitions_def=model_partitions,
    deps=["base_model"],
    group_name="data",
    kinds={"safetensors"},
    code_version=corpus.CODE_VERSION,
)
def eval_corpus(context: dg.AssetExecutionContext, model_store: ModelStoreResource) -> dg.MaterializeResult:
    """WikiText-2 raw test split, its rows as the HF dataset holds them (whitespace-only rows
    empty) joined with "\\n\\n", tokenized with the model's tokenizer
    into one stream (the perplexity protocol's corpus)."""
    return _tokenize_to_store(
        context, model_store, WIKITEXT2_RAW_TEST, "eval", corpus_text(WIKITEXT2_RAW_TEST), repr(EVAL_JOINER)
    )


@dg.asset(
    partitions_def=model_partitions,
    deps=["base_model"],
    group_name="data",
    kinds={"safetensors"},
    code_version=corpus.CODE_VERSION,
)
def calibration_corpus(
    context: dg.AssetExecutionContext, model_store: ModelStoreResource
) -> dg.MaterializeResult:
    """WikiText-2 valid split, held apart from evaluation: calibration for head pruning and
    SparseGPT, training text for distillation."""
    return _tokenize_to_store(
        context, model_store, WIKITEXT2_VALID, "calibration", file_text(WIKITEXT2_VALID), "none (the file as one stream)"
    )


@dg.asset(
    partitions_def=model_partitions,
    deps=["base_model"],
    group_name="data",
    kinds={"safetensors"},
)
def distillation_corpus(
    context: dg.AssetExecutionContext,
    model_store: ModelStoreResource,
    profile: EvaluationProfileResource,
    compute: ComputeResource,
) -> dg.MaterializeResult:
    """The students' training text, tokenized (validation slice included): by default sampled from
    the teacher itself (seeded, sequence-level KD), never the evaluation domain's held-apart split
    unless the profile's `distillation_data` names it on purpose."""
    compute.apply_threads()
    info = build_distillation_corpus(
        model_store.store(), context.partition_key, profile.get(), device=compute.resolved_device()
    )
    return dg.MaterializeResult(
        metadata={
            "tokens": dg.MetadataValue.int(info["tokens"]),
            "source": info["source"],
            "seed": dg.MetadataValue.int(info["seed"]),
            "seconds": dg.MetadataValue.float(info["seconds"]),
            "path": dg.MetadataValue.path(info["path"]),
        },
        data_version=dg.DataVersion(info["tokens_sha256"][:16]),
    )
