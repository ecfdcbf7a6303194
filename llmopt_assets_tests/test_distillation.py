import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from llmopt_assets.models.architecture import decoder_layers
from llmopt_assets.techniques.distillation import (
    DistillationConfig,
    DistillationDivergedError,
    DistillProgress,
    default_kept_layers,
    distill,
    init_student,
    kd_loss,
    pack_blocks,
)
from llmopt_assets_tests.tiny_models import VOCAB_SIZE, random_token_ids, tiny_config, tiny_model

# --- default_kept_layers -------------------------------------------------------------------


def test_default_kept_layers_reproduces_distilgpt2_and_halves_smollm2() -> None:
    assert default_kept_layers(12) == [0, 2, 4, 7, 9, 11]  # DistilGPT2's choice
    smollm2 = default_kept_layers(30)
    assert len(smollm2) == 15 and smollm2[0] == 0 and smollm2[-1] == 29
    assert smollm2 == sorted(set(smollm2))
    assert default_kept_layers(4) == [0, 3]
    assert default_kept_layers(1) == [0]
    with pytest.raises(ValueError, match="at least one"):
        default_kept_layers(0)


# --- init_student ----------------------------------------------------------------------------


def _non_layer_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    layer_prefixes = ("transformer.h.", "model.decoder.layers.", "model.layers.")
    return {
        name: tensor for name, tensor in model.state_dict().items()
        if not any(name.startswith(prefix) for prefix in layer_prefixes)
    }


def test_student_copies_kept_layers_exactly(arch: str) -> None:
    teacher = tiny_model(arch)
    before = {name: tensor.clone() for name, tensor in teacher.state_dict().items()}
    student = init_student(teacher, [0, 2, 3])

    student_layers, teacher_layers = decoder_layers(student), decoder_layers(teacher)
    assert len(student_layers) == 3 and student.config.num_hidden_layers == 3
    for new_index, old_index in enumerate([0, 2, 3]):
        student_state = student_layers[new_index].state_dict()
        teacher_state = teacher_layers[old_index].state_dict()
        assert student_state.keys() == teacher_state.keys()
        for name in teacher_state:
            assert torch.equal(student_state[name], teacher_state[name]), (new_index, name)
        # the cache is indexed by layer_idx: renumbered 0..2
        indices = {m.layer_idx for m in student_layers[new_index].modules() if hasattr(m, "layer_idx")}
        assert indices == {new_index}

    # embeddings, final norm and head are equal
    student_rest, teacher_rest = _non_layer_state(student), _non_layer_state(teacher)
    assert student_rest.keys() == teacher_rest.keys()
    for name in teacher_rest:
        assert torch.equal(student_rest[name], teacher_rest[name]), name
    student_head, teacher_head = student.get_output_embeddings(), teacher.get_output_embeddings()
    assert torch.equal(student_head.weight, teacher_head.weight)

    # the teacher is untouched, and the student shares no storage with it
    assert len(decoder_layers(teacher)) == 4 and teacher.config.num_hidden_layers == 4
    after = teacher.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    student_embeddings = student.get_input_embeddings().weight
    assert student_embeddings.data_ptr() != teacher.get_input_embeddings().weight.data_ptr()

    ids = random_token_ids(2, 16)
    with torch.no_grad():
        logits = student(input_ids=ids).logits
    assert logits.shape == (2, 16, VOCAB_SIZE) and torch.isfinite(logits).all()


def test_student_keeping_every_layer_computes_what_the_teacher_computes(arch: str) -> None:
    teacher = tiny_model(arch)
    student = init_student(teacher, [0, 1, 2, 3])
    ids = random_token_ids(2, 12)
    with torch.no_grad():
        assert torch.allclose(student(input_ids=ids).logits, teacher(input_ids=ids).logits)


def test_student_incremental_decoding_matches_full_forward(arch: str) -> None:
    # With stale layer indices the KV cache would mix layers (or index past its end).
    student = init_student(tiny_model(arch), [1, 3])
    ids = random_token_ids(1, 10)
    with torch.no_grad():
        full = student(input_ids=ids).logits
        out = student(input_ids=ids[:, :6], use_cache=True)
        steps = [out.logits]
        cache = out.past_key_values
        for position in range(6, 10):
            out = student(input_ids=ids[:, position : position + 1], cache=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_student_save_load_round_trip(arch: str, tmp_path) -> None:
    student = init_student(tiny_model(arch))
    student.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert loaded.config.num_hidden_layers == 2 and len(decoder_layers(loaded)) == 2
    ids = random_token_ids(2, 12)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, student(input_ids=ids).logits)


def test_gpt2_inverse_layer_scaling_follows_the_new_index(tmp_path) -> None:
    config = tiny_config("gpt2")
    config.scale_attn_by_inverse_layer_idx = True
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    student = init_student(teacher, [2, 3])
    student.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = random_token_ids(1, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, student(input_ids=ids).logits)


@pytest.mark.parametrize(
    ("kept", "problem"),
    [
        ([], "empty"),
        ([0, 4], "out of range"),
        ([-1, 2], "out of range"),
        ([0, 0, 2], "duplicates"),
        ([2, 0], "increasing"),
        ([0, 1.5], "integer"),
    ],
)
def test_invalid_layer_lists_are_refused(kept: list, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        init_student(tiny_model("llama"), kept)


# --- kd_loss, against values written out by hand -----------------------------------------------


def _softmax_3(a: float, b: float, c: float, temperature: float) -> list[float]:
    ea, eb, ec = math.exp(a / temperature), math.exp(b / temperature), math.exp(c / temperature)
    z = ea + eb + ec
    return [ea / z, eb / z, ec / z]


def _kl_3(p: list[float], q: list[float]) -> float:
    """KL(p ‖ q) = Σ_v p_v (ln p_v − ln q_v), written out for a 3-word vocabulary."""
    return (
        p[0] * (math.log(p[0]) - math.log(q[0]))
        + p[1] * (math.log(p[1]) - math.log(q[1]))
        + p[2] * (math.log(p[2]) - math.log(q[2]))
    )


STUDENT = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
TEACHER = [[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]
LABELS = [[1, 2]]


def _hand_loss(temperature: float, alpha: float, reverse: bool) -> tuple[float, float, float]:
    kls = []
    for s, t in zip(STUDENT, TEACHER, strict=True):
        p_student, p_teacher = _softmax_3(*s, temperature), _softmax_3(*t, temperature)
        kls.append(_kl_3(p_student, p_teacher) if reverse else _kl_3(p_teacher, p_student))
    kl = (kls[0] + kls[1]) / 2  # averaged over the 2 tokens
    # next-token CE: the logits at position 0 predict labels[1] = 2, at temperature 1
    ce = -math.log(_softmax_3(*STUDENT[0], 1.0)[2])
    return alpha * temperature**2 * kl + (1 - alpha) * ce, kl, ce


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("temperature", "alpha"), [(2.0, 0.5), (1.0, 0.3), (3.0, 1.0)])
def test_kd_loss_equals_hand_computed_value(
    temperature: float, alpha: float, reverse: bool
) -> None:
    loss = kd_loss(
        torch.tensor([STUDENT]), torch.tensor([TEACHER]), torch.tensor(LABELS),
        temperature=temperature, alpha=alpha, reverse=reverse,
    )
    total, kl, ce = _hand_loss(temperature, alpha, reverse)
    assert loss.kl.item() == pytest.approx(kl, rel=1e-5)
    assert loss.ce.item() == pytest.approx(ce, rel=1e-5)
    assert loss.total.item() == pytest.approx(total, rel=1e-5)


def test_kd_loss_scales_kl_by_temperature_squared() -> None:
    loss = kd_loss(torch.tensor([STUDENT]), torch.tensor([TEACHER]), torch.tensor(LABELS),
                   temperature=3.0, alpha=1.0)
    _, kl_at_3, _ = _hand_loss(3.0, 1.0, False)
    assert loss.total.item() == pytest.approx(9.0 * kl_at_3, rel=1e-5)
    assert loss.total.item() != pytest.approx(kl_at_3, rel=1e-2)


def test_reverse_kl_differs_from_forward_kl_on_asymmetric_example() -> None:
    args = (torch.tensor([STUDENT]), torch.tensor([TEACHER]), torch.tensor(LABELS))
    forward = kd_loss(*args, temperature=1.0, reverse=False).kl.item()
    reverse = kd_loss(*args, temperature=1.0, reverse=True).kl.item()
    assert forward == pytest.approx(_hand_loss(1.0, 0.5, False)[1], rel=1e-5)
    assert reverse == pytest.approx(_hand_loss(1.0, 0.5, True)[1], rel=1e-5)
    assert abs(forward - reverse) > 1e-3


def test_alpha_zero_is_plain_next_token_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(3, 7, 11, generator=generator)
    teacher = torch.randn(3, 7, 11, generator=generator)
    labels = torch.randint(0, 11, (3, 7), generator=generator)
    labels[0, 4] = labels[2, 6] = -100
    reference = F.cross_entropy(
        student[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    loss = kd_loss(student, teacher, labels, alpha=0.0)
    assert torch.allclose(loss.total, reference)


def test_kl_ignores_masked_positions() -> None:
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(2, 5, 6, generator=generator)
    teacher = torch.randn(2, 5, 6, generator=generator)
    labels = torch.ones(2, 5, dtype=torch.long)
    labels[1, 3:] = -100  # padding at the end of the second row
    kept = [(0, t) for t in range(5)] + [(1, t) for t in range(3)]
    per_token = []
    for row, position in kept:  # slow, one position at a time
        p = torch.softmax(teacher[row, position] / 2.0, -1)
        q = torch.softmax(student[row, position] / 2.0, -1)
        per_token.append(sum(p[v] * (p[v].log() - q[v].log()) for v in range(6)))
    loss = kd_loss(student, teacher, labels, temperature=2.0)
    assert loss.kl.item() == pytest.approx(sum(per_token).item() / len(kept), rel=1e-5)


def test_kd_loss_refuses_mismatched_vocabularies() -> None:
    with pytest.raises(ValueError, match="shape"):
        kd_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long))


# --- pack_blocks and config ----------------------------------------------------------------


def test_pack_blocks_drops_the_tail() -> None:
    blocks = pack_blocks(torch.arange(11), 3)
    assert blocks.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert pack_blocks(torch.arange(6).unsqueeze(0), 3).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="too few"):
        pack_blocks(torch.arange(2), 3)
    with pytest.raises(ValueError, match="too few"):
        pack_blocks(torch.arange(0), 3)
    with pytest.raises(ValueError, match="positive"):
        pack_blocks(torch.arange(6), 0)


def test_presets_are_valid_and_invalid_configs_are_refused() -> None:
    for preset in (DistillationConfig.SMOKE, DistillationConfig.PAPER):
        assert json.loads(json.dumps(preset.to_dict()))["steps"] == preset.steps
    assert DistillationConfig.PAPER.steps * DistillationConfig.PAPER.batch_size > 100 * (
        DistillationConfig.SMOKE.steps * DistillationConfig.SMOKE.batch_size
    )
    with pytest.raises(ValueError, match="alpha"):
        dataclasses.replace(DistillationConfig.SMOKE, alpha=1.5)
    with pytest.raises(ValueError, match="schedule"):
        dataclasses.replace(DistillationConfig.SMOKE, schedule="step")


# --- training ------------------------------------------------------------------------------

N_SYMBOLS = 16


def _patterned_stream(length: int, seed: int) -> torch.Tensor:
    """Tokens 3..18 following a fixed successor table; 10% of tokens are random noise."""
    successor = torch.randperm(N_SYMBOLS, generator=torch.Generator().manual_seed(123))
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(length, generator=generator) < 0.1
    random_symbols = torch.randint(0, N_SYMBOLS, (length,), generator=generator)
    symbols = [int(random_symbols[0])]
    for i in range(1, length):
        symbols.append(int(random_symbols[i]) if noise[i] else int(successor[symbols[-1]]))
    return torch.tensor(symbols) + 3


def _perplexity(model, blocks: torch.Tensor) -> float:
    """exp(mean next-token NLL), the textbook definition, one block at a time."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for block in blocks:
            logits = model(input_ids=block.unsqueeze(0)).logits[0, :-1]
            log_probs = torch.log_softmax(logits.double(), -1)
            nll -= log_probs[torch.arange(len(block) - 1), block[1:]].sum().item()
            count += len(block) - 1
    return math.exp(nll / count)


@pytest.fixture(scope="module")
def patterned_teacher():
    """A tiny Llama trained (plain LM loss, own loop) until it knows the successor table."""
    teacher = tiny_model("llama", seed=0)
    blocks = pack_blocks(_patterned_stream(64 * 32, seed=1), 32)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=1e-2)
    teacher.train()
    torch.manual_seed(0)
    for step in range(60):
        batch = blocks[(step * 8) % 64 : (step * 8) % 64 + 8]
        logits = teacher(input_ids=batch).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB_SIZE), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return teacher.eval()


TRAIN_CONFIG = DistillationConfig(
    steps=30, batch_size=8, block_length=32, learning_rate=1e-2, warmup_steps=3,
    schedule="cosine", temperature=2.0, alpha=0.5, log_every=10,
)


@pytest.mark.parametrize("reverse_kl", [False, True])
def test_distilled_student_beats_the_undistilled_one_on_held_out_data(
    patterned_teacher, reverse_kl: bool
) -> None:
    train = pack_blocks(_patterned_stream(64 * 32, seed=2), 32)
    held_out = pack_blocks(_patterned_stream(8 * 64, seed=3), 64)
    teacher_ppl = _perplexity(patterned_teacher, held_out)
    assert teacher_ppl < 4.0  # the teacher learnt the pattern (uniform over 16 symbols: 16)

    undistilled = init_student(patterned_teacher, [0, 3])
    student = init_student(patterned_teacher, [0, 3])
    probe = train[:8]

    def probe_loss() -> float:
        with torch.no_grad():
            student_logits = student(input_ids=probe).logits
            teacher_logits = patterned_teacher(input_ids=probe).logits
            return kd_loss(student_logits, teacher_logits, probe).total.item()

    loss_before = probe_loss()
    progress: list[DistillProgress] = []
    config = dataclasses.replace(TRAIN_CONFIG, reverse_kl=reverse_kl)
    result = distill(patterned_teacher, student, train, config, log=progress.append)
    loss_after = probe_loss()
    assert loss_after < 0.7 * loss_before

    undistilled_ppl = _perplexity(undistilled, held_out)
    distilled_ppl = _perplexity(student, held_out)
    assert distilled_ppl < 0.8 * undistilled_ppl
    assert distilled_ppl < 1.5 * teacher_ppl

    assert [p.step for p in progress] == [10, 20, 30]
    assert progress[-1].eta_seconds == 0 and all(p.tokens_per_second > 0 for p in progress)
    assert len(result.loss_history) == 30 and result.final_loss == result.loss_history[-1]
    assert result.tokens_seen == 30 * 8 * 32
    assert json.loads(json.dumps(result.to_dict()))["config"]["learning_rate"] == 1e-2
    assert not student.training and not patterned_teacher.training


def test_distill_leaves_the_teacher_untouched(patterned_teacher) -> None:
    before = {name: tensor.clone() for name, tensor in patterned_teacher.state_dict().items()}
    student = init_student(patterned_teacher, [0, 3])
    train = pack_blocks(_patterned_stream(8 * 32, seed=4), 32)
    distill(patterned_teacher, student, train, dataclasses.replace(TRAIN_CONFIG, steps=3))
    after = patterned_teacher.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(p.grad is None for p in patterned_teacher.parameters())


def test_same_seed_gives_identical_weights() -> None:
    # GPT-2 has dropout: the seed must cover the dropout masks too.
    teacher = tiny_model("gpt2")
    train = random_token_ids(16, 24)
    config = dataclasses.replace(
        TRAIN_CONFIG, steps=4, batch_size=4, block_length=24, learning_rate=1e-3
    )

    def run(seed: int) -> dict[str, torch.Tensor]:
        student = init_student(teacher, [0, 3])
        distill(teacher, student, train, dataclasses.replace(config, seed=seed))
        return student.state_dict()

    first, second, other_seed = run(0), run(0), run(1)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert any(not torch.equal(first[name], other_seed[name]) for name in first)


def test_absurd_learning_rate_raises_diverged_error() -> None:
    teacher = tiny_model("opt")
    student = init_student(teacher, [0, 3])
    train = random_token_ids(8, 16)
    config = dataclasses.replace(
        TRAIN_CONFIG, steps=20, batch_size=4, block_length=16, learning_rate=1e12,
        warmup_steps=0, schedule="constant", grad_clip=None,
    )
    with pytest.raises(DistillationDivergedError, match=r"diverged at step \d+"):
        distill(teacher, student, train, config)


def test_poisoned_teacher_raises_diverged_error_at_step_one() -> None:
    teacher = tiny_model("llama")
    student = init_student(teacher, [0, 3])
    with torch.no_grad():
        teacher.lm_head.weight[5, 0] = float("nan")
    train = random_token_ids(4, 16)
    config = dataclasses.replace(
        TRAIN_CONFIG, steps=2, warmup_steps=0, batch_size=2, block_length=16
    )
    with pytest.raises(DistillationDivergedError, match="step 1") as error:
        distill(teacher, student, train, config)
    assert isinstance(error.value, ValueError) and error.value.step == 1


def test_distill_refuses_blocks_of_the_wrong_length() -> None:
    teacher = tiny_model("llama")
    with pytest.raises(ValueError, match="block_length"):
        distill(teacher, init_student(teacher), random_token_ids(4, 20), TRAIN_CONFIG)
