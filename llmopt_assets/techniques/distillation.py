"""Knowledge distillation: a shallower student cut from the teacher, trained on its soft labels.

The recipe is DistilGPT2's (Sanh et al. 2019, "DistilBERT", applied to GPT-2): the student keeps
every other teacher layer (initialisation from the teacher matters more than anything else in
that paper), and is trained on a mix of the teacher's temperature-softened next-token
distribution and the ordinary language-modelling loss. MiniLLM's token-level reverse KL
(Gu et al. 2024) is available as an option: it makes the student mode-seeking instead of
spreading mass over everything the teacher finds plausible.

Pure core: no Dagster here. The pipeline calls `init_student`, `pack_blocks` and `distill`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from llmopt_assets.models.architecture import decoder_layers, model_family, set_decoder_layers

# Bump with any change to the distillation algorithm (distilled_student):
# Dagster then marks what it made stale.
CODE_VERSION = "2"  # 2: validation slice, early stopping, epoch limit

IGNORE_INDEX = -100
Schedule = Literal["cosine", "linear", "constant"]
SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")


def default_kept_layers(n_layers: int) -> list[int]:
    """Half the layers (at least two), evenly spaced, first and last kept.

    Index i of k kept layers is round(i·(n−1)/(k−1)), rounding halves up; for 12 layers that
    gives DistilGPT2's 0, 2, 4, 7, 9, 11, and for SmolLM2's 30 it gives 15 layers.
    """
    if n_layers < 1:
        raise ValueError(f"a model needs at least one decoder layer, got n_layers={n_layers}")
    if n_layers == 1:
        return [0]
    n_kept = max(2, n_layers // 2)
    step = (n_layers - 1) / (n_kept - 1)
    return [math.floor(i * step + 0.5) for i in range(n_kept)]


def _validate_kept_layers(kept_layers: Sequence[int], n_layers: int) -> list[int]:
    kept = list(kept_layers)
    if not kept:
        raise ValueError("kept_layers is empty: a student needs at least one decoder layer")
    for index in kept:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"kept_layers must hold integer layer indices, got {index!r}")
        if not 0 <= index < n_layers:
            raise ValueError(
                f"kept layer {index} is out of range: the teacher has layers 0..{n_layers - 1}"
            )
    if len(set(kept)) != len(kept):
        raise ValueError(f"kept_layers has duplicates: {kept}")
    if kept != sorted(kept):
        raise ValueError(f"kept_layers must be in increasing (teacher) order, got {kept}")
    return kept


def _renumber_layer(layer: nn.Module, new_index: int) -> None:
    """Give a moved block its new position; the KV cache is indexed by layer_idx."""
    for module in layer.modules():
        if hasattr(module, "layer_idx"):
            module.layer_idx = new_index
            # GPT-2 can scale attention by 1/(layer_idx+1), fixed at construction; recompute so
            # the student in memory computes what it will compute after save/load.
            if getattr(module, "scale_attn_by_inverse_layer_idx", False):
                scaling = module.head_dim**-0.5 if module.scale_attn_weights else 1.0
                module.scaling = scaling / float(new_index + 1)


def init_student(
    teacher: PreTrainedModel, kept_layers: Sequence[int] | None = None
) -> PreTrainedModel:
    """A deep copy of the teacher keeping only `kept_layers` (default: `default_kept_layers`).

    Embeddings, final norm and LM head are copied (tied weights stay tied); the config's layer
    count (and per-layer `layer_types`, where the family has them) follow. The teacher is not
    modified. The student is returned in eval mode.
    """
    model_family(teacher)  # refuses unsupported architectures with a clear message
    n_layers = len(decoder_layers(teacher))
    kept = _validate_kept_layers(
        default_kept_layers(n_layers) if kept_layers is None else kept_layers, n_layers
    )

    student = copy.deepcopy(teacher)
    copied_layers = decoder_layers(student)
    layers = nn.ModuleList(copied_layers[index] for index in kept)
    for new_index, layer in enumerate(layers):
        _renumber_layer(layer, new_index)
    set_decoder_layers(student, layers)

    layer_types = getattr(student.config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n_layers:
        student.config.layer_types = [layer_types[index] for index in kept]
    return student.eval()


@dataclass(frozen=True)
class KDLoss:
    """total = α·T²·kl + (1−α)·ce. `kl` is the per-token KL at temperature T (before T²)."""

    total: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    reverse: bool = False,
) -> KDLoss:
    """The DistilGPT2 loss: α·T²·KL(p_teacher^T ‖ p_student^T) + (1−α)·CE(student, labels).

    Shapes: logits [B, L, V], labels [B, L] (unshifted, HF convention; -100 = ignore).
    - KL is summed over the vocabulary and averaged over the positions whose input token is
      real (labels != -100), the last position included: the teacher's prediction there is a
      soft label even though the batch holds no next token. The T² keeps the gradient scale
      independent of T (Hinton et al. 2015).
    - CE is next-token shifted (logits[:, t] predicts labels[:, t+1]), mean over non-ignored
      targets.
    - reverse=True uses KL(p_student^T ‖ p_teacher^T), MiniLLM's token-level reverse KL.
    Computed in fp32 whatever the logits' dtype.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)} (same tokenizer/vocabulary needed)"
        )
    if student_logits.dim() != 3 or labels.shape != student_logits.shape[:2]:
        raise ValueError(
            f"expected logits [B, L, V] and labels [B, L], got {tuple(student_logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")

    student_logits = student_logits.float()
    teacher_logits = teacher_logits.float()
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    if reverse:
        kl_per_token = (log_p_student.exp() * (log_p_student - log_p_teacher)).sum(-1)
    else:
        kl_per_token = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    real = labels != IGNORE_INDEX
    kl = (kl_per_token * real).sum() / real.sum().clamp(min=1)

    shifted_logits = student_logits[:, :-1].reshape(-1, student_logits.shape[-1])
    shifted_labels = labels[:, 1:].reshape(-1)
    if (shifted_labels != IGNORE_INDEX).any():
        ce = F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX)
    else:  # nothing to predict (one-token sequences): CE contributes nothing
        ce = student_logits.new_zeros(())
    total = alpha * temperature**2 * kl + (1.0 - alpha) * ce
    return KDLoss(total=total, kl=kl, ce=ce)


@dataclass(frozen=True)
class DistillationConfig:
    """Hyper-parameters of one distillation run; `to_dict` goes into the asset's metadata."""

    steps: int
    batch_size: int
    block_length: int
    learning_rate: float
    warmup_steps: int = 0
    schedule: Schedule = "cosine"
    weight_decay: float = 0.01
    temperature: float = 2.0
    alpha: float = 0.5
    reverse_kl: bool = False
    seed: int = 0
    grad_clip: float | None = 1.0
    log_every: int = 10
    # Early stopping: every `eval_every` steps (0: never) the KD loss on the held-out validation
    # blocks; training stops after `patience` evaluations without a new best, and the best
    # weights are kept.
    eval_every: int = 0
    patience: int = 3
    validation_fraction: float = 0.1  # of the training corpus's blocks, held out (at most 16)
    max_epochs: float = 4.0  # more passes over the training corpus than this are refused

    # SMOKE: proves the pipeline end to end on a laptop CPU: 40 steps × 256 tokens. SmolLM2-135M
    # -> 15-layer student trains at ~170 tokens/s on 2 idle cores (teacher forward + student
    # forward/backward through a 49k vocabulary), so about a minute. It does NOT recover the
    # quality lost by dropping layers (measured on 2k WikiText-2 test tokens: undistilled
    # ~800k, 8 steps ~4.3k, 60 steps ~380; teacher ~31). A constant rate after a 1-step
    # warmup: too few steps for a decay schedule to matter, and 3e-4 did twice as well as 1e-4.
    SMOKE: ClassVar[DistillationConfig]
    # PAPER: a real run on one GPU, DistilGPT2-like (T=2, lr 5e-4 with warmup and cosine
    # decay, AdamW, clip 1.0): 20k steps × 8 × 1024 tokens ≈ 164M tokens. That needs a
    # training corpus far larger than WikiText-2 (blocks are reused epoch after epoch
    # otherwise, and the student overfits); DistilGPT2 itself saw OpenWebText.
    PAPER: ClassVar[DistillationConfig]

    def __post_init__(self) -> None:
        problems = []
        if self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.block_length < 2:
            problems.append(
                f"block_length must be >= 2 (CE needs a next token), got {self.block_length}"
            )
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup_steps <= self.steps:
            problems.append(f"warmup_steps must be in [0, steps], got {self.warmup_steps}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.temperature > 0:
            problems.append(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            problems.append(f"alpha must be in [0, 1], got {self.alpha}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"grad_clip must be positive or None, got {self.grad_clip}")
        if self.log_every < 1:
            problems.append(f"log_every must be >= 1, got {self.log_every}")
        if self.eval_every < 0 or self.patience < 1:
            problems.append(f"eval_every must be >= 0 and patience >= 1, got {self.eval_every}, {self.patience}")
        if not 0 < self.validation_fraction < 1 or not self.max_epochs > 0:
            problems.append(
                f"validation_fraction must be in (0, 1) and max_epochs > 0, got "
                f"{self.validation_fraction}, {self.max_epochs}"
            )
        if problems:
            raise ValueError("invalid DistillationConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DistillationConfig.SMOKE = DistillationConfig(
    steps=40, batch_size=1, block_length=256, learning_rate=3e-4, warmup_steps=1,
    schedule="constant", log_every=5, eval_every=10, patience=2,
)
DistillationConfig.PAPER = DistillationConfig(
    steps=20_000, batch_size=8, block_length=1024, learning_rate=5e-4, warmup_steps=1_000,
    schedule="cosine", log_every=100, eval_every=500, patience=4,
)


PRESETS = {"smoke": DistillationConfig.SMOKE, "paper": DistillationConfig.PAPER}


class DistillationDivergedError(ValueError):
    """The loss (or the weights) became NaN/inf; the student must not be saved."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(
            f"distillation diverged at step {step}: {what}; lower the learning rate or check "
            "the teacher (the student is unusable and must not be saved)"
        )
        self.step = step


@dataclass(frozen=True)
class DistillProgress:
    step: int  # 1-based, the step just finished
    steps: int
    loss: float
    kl: float
    ce: float
    learning_rate: float
    tokens_per_second: float
    eta_seconds: float


@dataclass(frozen=True)
class DistillationResult:
    final_loss: float
    loss_history: list[float]  # total loss of every step, in order
    tokens_seen: int
    seconds: float
    config: dict[str, Any]
    # (step, KD loss on the validation blocks) at each evaluation; empty without validation
    validation_history: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    best_step: int | None = None  # the step whose weights were kept (None: the last)
    stopped_early: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "final_loss": self.final_loss,
            "loss_history": list(self.loss_history),
            "tokens_seen": self.tokens_seen,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
            "config": dict(self.config),
            "validation_history": [list(entry) for entry in self.validation_history],
            "best_step": self.best_step,
            "stopped_early": self.stopped_early,
        }


def pack_blocks(token_ids: torch.Tensor, block_length: int) -> torch.Tensor:
    """Cut one long token stream (1-D, or [1, N] as tokenizers return it) into [n_blocks, L].

    The tail shorter than a block is dropped, as in GPT-2-style LM training.
    """
    if block_length < 1:
        raise ValueError(f"block_length must be positive, got {block_length}")
    if token_ids.dim() == 2 and token_ids.shape[0] == 1:
        token_ids = token_ids[0]
    if token_ids.dim() != 1:
        raise ValueError(f"expected a 1-D token stream, got shape {tuple(token_ids.shape)}")
    n_blocks = token_ids.numel() // block_length
    if n_blocks == 0:
        raise ValueError(
            f"{token_ids.numel()} tokens are too few for one block of {block_length}"
        )
    return token_ids[: n_blocks * block_length].reshape(n_blocks, block_length).clone()


def _learning_rate_factor(step: int, config: DistillationConfig) -> float:
    """Multiplier of the base rate at 0-based `step`: linear warmup, then the schedule to 0."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    decay_steps = max(1, config.steps - config.warmup_steps)
    progress = (step - config.warmup_steps) / decay_steps
    if config.schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _adamw(student: nn.Module, config: DistillationConfig) -> torch.optim.AdamW:
    # No weight decay on biases and norm gains (1-D), as in GPT-2/nanoGPT training.
    params = [p for p in student.parameters() if p.requires_grad]
    decayed = [p for p in params if p.dim() >= 2]
    not_decayed = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decayed, "weight_decay": config.weight_decay},
            {"params": not_decayed, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )


def _batch_order(n_blocks: int, config: DistillationConfig) -> torch.Tensor:
    """Block indices for every step: seeded reshuffles, epoch after epoch."""
    generator = torch.Generator().manual_seed(config.seed)
    needed = config.steps * config.batch_size
    epochs = [torch.randperm(n_blocks, generator=generator) for _ in range(-(-needed // n_blocks))]
    return torch.cat(epochs)[:needed].view(config.steps, config.batch_size)


def distill(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    train_blocks: torch.Tensor,
    config: DistillationConfig,
    *,
    log: Callable[[DistillProgress], None] | None = None,
    validation_blocks: torch.Tensor | None = None,
) -> DistillationResult:
    """Train `student` in place on the teacher's soft labels (`kd_loss`) over `train_blocks`.

    With `validation_blocks` and `config.eval_every`, the KD loss on them is measured every
    eval_every steps; after `config.patience` evaluations without a new best, training stops,
    and the student gets the weights of its best evaluation back.

    AdamW, warmup + schedule, gradient clipping; the teacher runs in eval mode without grad and
    is left untouched. Seeded: the same seed, data and thread count give the same weights.
    `log` gets a DistillProgress every `config.log_every` steps and after the last one.
    Raises DistillationDivergedError when the loss or the weights turn NaN/inf. The student is
    left in eval mode.
    """
    if train_blocks.dim() != 2 or train_blocks.shape[1] != config.block_length:
        raise ValueError(
            f"train_blocks must be [n_blocks, {config.block_length}] (config.block_length), "
            f"got {tuple(train_blocks.shape)}; make them with pack_blocks"
        )
    if train_blocks.shape[0] == 0:
        raise ValueError("train_blocks is empty")

    torch.manual_seed(config.seed)  # dropout masks, if the student has dropout
    order = _batch_order(train_blocks.shape[0], config)
    student_device = next(student.parameters()).device
    teacher_device = next(teacher.parameters()).device
    optimizer = _adamw(student, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _learning_rate_factor(step, config)
    )

    teacher_was_training = teacher.training
    teacher.eval()
    student.train()
    tokens_per_step = config.batch_size * config.block_length
    losses: list[float] = []
    validating = validation_blocks is not None and config.eval_every > 0
    validation_history: list[tuple[int, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (loss, step, weights)
    stopped_early = False
    start = time.perf_counter()
    try:
        for step in range(config.steps):
            batch = train_blocks[order[step]]
            with torch.no_grad():
                teacher_logits = teacher(
                    input_ids=batch.to(teacher_device), use_cache=False
                ).logits.to(student_device)
            input_ids = batch.to(student_device)
            student_logits = student(input_ids=input_ids, use_cache=False).logits
            loss = kd_loss(
                student_logits, teacher_logits, input_ids,
                temperature=config.temperature, alpha=config.alpha, reverse=config.reverse_kl,
            )
            if not torch.isfinite(loss.total):
                raise DistillationDivergedError(step + 1, f"loss is {loss.total.item()}")
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.total.item())

            done = step + 1
            if log is not None and (done % config.log_every == 0 or done == config.steps):
                elapsed = time.perf_counter() - start
                log(DistillProgress(
                    step=done, steps=config.steps, loss=losses[-1], kl=loss.kl.item(),
                    ce=loss.ce.item(), learning_rate=learning_rate,
                    tokens_per_second=done * tokens_per_step / elapsed,
                    eta_seconds=elapsed / done * (config.steps - done),
                ))
            if validating and (done % config.eval_every == 0 or done == config.steps):
                validation_loss = _validation_loss(teacher, student, validation_blocks, config)
                validation_history.append((done, validation_loss))
                if best is None or validation_loss < best[0]:
                    weights = {k: v.detach().clone() for k, v in student.state_dict().items()}
                    best = (validation_loss, done, weights)
                elif len(validation_history) - _evaluation_index(validation_history, best[1]) >= config.patience:
                    stopped_early = True
                    break
    finally:
        student.eval()
        teacher.train(teacher_was_training)
    seconds = time.perf_counter() - start

    if best is not None and best[1] != len(losses):
        student.load_state_dict(best[2])
    # The last update is never seen by a loss: check the weights it left behind.
    for name, parameter in student.named_parameters():
        if not torch.isfinite(parameter).all():
            raise DistillationDivergedError(len(losses), f"parameter {name} is not finite")
    return DistillationResult(
        final_loss=losses[-1], loss_history=losses, tokens_seen=len(losses) * tokens_per_step,
        seconds=seconds, config=config.to_dict(), validation_history=validation_history,
        best_step=best[1] if best is not None else None, stopped_early=stopped_early,
    )


def _evaluation_index(history: list[tuple[int, float]], step: int) -> int:
    """1-based position of the evaluation made at `step`."""
    return next(i for i, (at, _) in enumerate(history, start=1) if at == step)


@torch.no_grad()
def _validation_loss(
    teacher: PreTrainedModel, student: PreTrainedModel, blocks: torch.Tensor, config: DistillationConfig
) -> float:
    """The training objective (kd_loss total) on held-out blocks, the student in eval mode."""
    student.eval()
    total = 0.0
    try:
        for start in range(0, blocks.shape[0], config.batch_size):
            batch = blocks[start : start + config.batch_size]
            teacher_logits = teacher(input_ids=batch.to(next(teacher.parameters()).device), use_cache=False).logits
            input_ids = batch.to(next(student.parameters()).device)
            student_logits = student(input_ids=input_ids, use_cache=False).logits
            loss = kd_loss(
                student_logits, teacher_logits.to(student_logits.device), input_ids,
                temperature=config.temperature, alpha=config.alpha, reverse=config.reverse_kl,
            )
            total += float(loss.total) * batch.shape[0]
    finally:
        student.train()
    return total / blocks.shape[0]
