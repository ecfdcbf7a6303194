import dataclasses

import pytest
import torch

from llmopt_assets.measure.corpus import WIKITEXT2_RAW_TEST, WIKITEXT2_VALID, tokenize_stream
from llmopt_assets.measure.perplexity import PerplexityProtocol, evaluate_perplexity
from llmopt_assets.techniques.distillation import DistillationConfig, _validation_loss, distill, init_student, pack_blocks
from llmopt_assets.techniques.distillation_data import (
    DistillationSource,
    check_epochs,
    parse_source,
    sample_teacher_stream,
    split_validation,
)
from llmopt_assets_tests.tiny_models import tiny_model, tiny_tokenizer


def test_sources_are_parsed_or_refused() -> None:
    assert parse_source("teacher-samples") == DistillationSource("teacher-samples")
    assert parse_source("wikitext2-valid") == DistillationSource("wikitext2-valid")
    assert parse_source("hf:wikitext:wikitext-103-raw-v1:train") == DistillationSource(
        "hub", "wikitext", "wikitext-103-raw-v1", "train"
    )
    assert parse_source("hf:HuggingFaceFW/fineweb-edu:train") == DistillationSource(
        "hub", "HuggingFaceFW/fineweb-edu", None, "train"
    )
    for bad in ("wikitext", "hf:", "hf:only-a-path", "hf:a::train"):
        with pytest.raises(ValueError, match="unknown distillation data"):
            parse_source(bad)


def test_teacher_samples_are_seeded_sequences_from_the_start_token() -> None:
    teacher = tiny_model("llama")
    stream = sample_teacher_stream(teacher, 100, 16, start_token_id=2, seed=3, batch_size=4)
    assert stream.shape == (100,)
    assert torch.equal(stream[::16], torch.full((7,), 2))  # every sequence opens with it
    assert torch.equal(stream, sample_teacher_stream(teacher, 100, 16, 2, seed=3, batch_size=4))
    assert not torch.equal(stream, sample_teacher_stream(teacher, 100, 16, 2, seed=4, batch_size=4))


def test_validation_slice_and_epoch_limit_by_hand() -> None:
    blocks = torch.arange(40).view(20, 2)
    train, validation = split_validation(blocks, 0.1)
    assert torch.equal(train, blocks[:18]) and torch.equal(validation, blocks[18:])  # ceil(2.0) = 2
    assert split_validation(blocks, 0.01)[1].shape[0] == 1  # at least one block held out
    assert split_validation(torch.arange(4).view(2, 2), 0.9)[0].shape[0] == 1  # one left to train
    assert check_epochs(10_000, 2_500, 4.0) == 4.0
    with pytest.raises(ValueError, match=r"read its 2,500-token training corpus 4\.4 times"):
        check_epochs(11_000, 2_500, 4.0)


def test_early_stopping_keeps_the_best_validation_weights() -> None:
    teacher = tiny_model("llama")
    student = init_student(teacher, [0, 3])
    blocks = pack_blocks(torch.randint(3, 160, (16 * 32,), generator=torch.Generator().manual_seed(0)), 32)
    # a rate high enough to overshoot: the validation loss rises again after its best
    config = DistillationConfig(
        steps=30, batch_size=2, block_length=32, learning_rate=5e-2, eval_every=2, patience=3,
    )
    result = distill(teacher, student, blocks[:12], config, validation_blocks=blocks[12:])
    losses = [loss for _, loss in result.validation_history]
    best_step, best_loss = min(result.validation_history, key=lambda entry: entry[1])
    assert result.best_step == best_step
    # the student holds the weights of its best evaluation, not its last
    assert _validation_loss(teacher, student, blocks[12:], config) == pytest.approx(best_loss, rel=1e-5)
    assert result.stopped_early  # (seeded: best at step 16, stopped at 22)
    assert len(losses) - losses.index(best_loss) - 1 == config.patience
    assert len(result.loss_history) < config.steps


def perplexity(model, ids: torch.Tensor) -> float:
    return evaluate_perplexity(model, ids, PerplexityProtocol("wikitext-2", "", 64, 64, "float32")).perplexity


def test_a_student_trained_on_teacher_samples_does_not_beat_its_teacher_on_the_evaluation_text() -> None:
    tokenizer = tiny_tokenizer()
    evaluation = tokenize_stream(tokenizer, WIKITEXT2_RAW_TEST.read_text(encoding="utf-8")[:20000])[:2048]
    teacher = tiny_model("llama")
    config = DistillationConfig(steps=60, batch_size=4, block_length=64, learning_rate=3e-3, warmup_steps=1)
    samples = sample_teacher_stream(teacher, 64 * 64, 64, tokenizer.bos_token_id, seed=0)
    in_domain = tokenize_stream(tokenizer, WIKITEXT2_VALID.read_text(encoding="utf-8")[:40000])[: 64 * 64]

    def student_after(stream: torch.Tensor) -> float:
        student = init_student(teacher, [0, 3])
        distill(teacher, student, pack_blocks(stream, 64), config)
        return perplexity(student, evaluation)

    teacher_perplexity = perplexity(teacher, evaluation)
    # teacher samples: the student learns the teacher, nothing of WikiText (2%: seed noise)
    assert student_after(samples) > 0.98 * teacher_perplexity
    # the same run on the evaluation domain's text beats the teacher by far: what the test guards
    assert student_after(in_domain) < 0.8 * teacher_perplexity


def test_the_smoke_profile_plans_at_most_max_epochs_of_its_corpus() -> None:
    from llmopt_assets.profiles import get_profile

    profile = get_profile("smoke")
    smoke = dataclasses.replace(DistillationConfig.SMOKE)
    blocks = profile.distillation_tokens // smoke.block_length
    train_blocks = blocks - split_validation(torch.zeros(blocks, 1), smoke.validation_fraction)[1].shape[0]
    check_epochs(smoke.steps * smoke.batch_size * smoke.block_length, train_blocks * smoke.block_length, smoke.max_epochs)
