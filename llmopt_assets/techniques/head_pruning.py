"""Attention-head pruning (paper §3.1, techniques `ah90` / `ah80`), with heads physically removed.

Selection, in the paper's words: "If a single token receives most of the attention, the head
likely does not contain any important connections and can safely be pruned", with thresholds of
90% and 80%, "a single token receiving over 90% of attention". `head_attention_concentration`
measures that per head under a named criterion (recorded in the recipe and the manifest):

- `single-key-share` (the default, the paper's words read literally): the largest share of the
  head's attention that ONE key token receives, averaged over the queries that can see that
  key. A sink head (every query on token 0) scores ~1; a previous-token or induction head,
  sharp but on a different key from each query, scores low and is kept.
- `per-query-max` (our first reading, kept as an alternative): the mean over queries of each
  query's largest weight, whichever key it falls on. It also prunes sharply focused positional
  heads (previous-token, induction), which the paper's wording does not.

`select_heads_to_prune` picks the heads above a threshold.

Removal (`remove_heads`) slices the projection matrices, so a pruned model has fewer parameters
and does less work; nothing is masked. transformers 5 dropped `prune_heads`, hence this code.

- GPT-2: `c_attn` is a Conv1D whose weight is [hidden, 3*hidden] (q, k, v side by side, the
  transpose of a Linear): the head's columns go from each of q, k and v, and from its bias.
  `c_proj` (Conv1D, weight [hidden_in, hidden]) loses the head's rows.
- OPT: `q_proj`, `k_proj`, `v_proj` (Linear) lose the head's output rows and bias entries;
  `out_proj` loses the head's input columns.
- Llama-shaped decoders with grouped KV heads (GQA; Llama, Mistral, Qwen2/3, Gemma, SmolLM):
  pruning is at query-head level. `q_proj` loses the head's rows, `o_proj` its columns. A KV
  head (its rows of `k_proj` and `v_proj`) is removed only when every query head of its group
  is removed. When the surviving groups all keep the same number of query heads, the
  standard `repeat_kv` still applies and `num_key_value_groups` is set to that number. When they
  do not (e.g. 3 query heads left of one group and 1 of another), `k_proj` and `v_proj` are each
  wrapped in a `KeyValueHeadExpansion`: it runs the (smaller) projection and then copies each
  KV head once per surviving query head of its group, by an index map, so that the attention
  interface (eager, sdpa or any other) sees one KV head per query head
  (`num_key_value_groups = 1`). The wrapped weights are saved as `k_proj.projection.weight`;
  quantizers that replace `nn.Linear` modules replace the inner projection and keep the
  expansion. The KV cache then holds the expanded heads (more memory when generating).
  Phi-3's fused `qkv_proj` is not supported.

Each pruned attention module records the ORIGINAL indices of its remaining heads
(`kept_heads`), so `remove_heads` may be applied again with original indices and
`pruned_head_spec` can tell what was removed. The config keeps the original head counts;
a pruned model is saved with `save_pretrained` plus `save_head_spec` and loaded with
`load_head_pruned`, which rebuilds the unpruned model from the config, removes the same heads
and then loads the weights strictly.
"""

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.pytorch_utils import Conv1D

from llmopt_assets.models.architecture import decoder_layers, model_family
from llmopt_assets.profiles import HEAD_CRITERIA

# Bump with any change to head scoring, selection or removal (ah* variants):
# Dagster then marks what it made stale.
CODE_VERSION = "1"

HEAD_SPEC_FILE = "pruned_heads.json"
PAPER_THRESHOLDS = {"ah90": 0.9, "ah80": 0.8}
# Query position q attends causally to q + 1 keys, so its top share is at least 1 / (q + 1)
# (exactly 1 at q = 0). Positions below this index are left out of the concentration so that
# this trivial concentration does not make heads look prunable: from position 8 the floor is
# 1/9, far below the paper's 80% and 90% thresholds.
DEFAULT_MIN_QUERY_POSITION = 8
# The criteria `head_attention_concentration` can measure (see the module docstring); the
# profiles name them without importing this module.
SINGLE_KEY_SHARE, PER_QUERY_MAX = HEAD_CRITERIA
CRITERIA = HEAD_CRITERIA
DEFAULT_CRITERION = SINGLE_KEY_SHARE

HeadSpec = dict[int, list[int]]


class KeyValueHeadExpansion(nn.Module):
    """A key or value projection followed by a copy of each KV head per query head it serves.

    Used when pruning left the GQA groups of a layer with different sizes, where `repeat_kv`'s
    uniform repetition no longer matches the query heads.
    """

    def __init__(self, projection: nn.Linear, kv_head_of_query_head: list[int], head_dim: int):
        super().__init__()
        self.projection = projection
        self.head_dim = head_dim
        # Not persistent: it is rebuilt from the head spec when loading.
        self.register_buffer(
            "kv_head_of_query_head",
            torch.tensor(kv_head_of_query_head, dtype=torch.long, device=projection.weight.device),
            persistent=False,
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        kv = self.projection(hidden_states)
        kv = kv.view(*kv.shape[:-1], -1, self.head_dim)
        expanded = kv.index_select(-2, self.kv_head_of_query_head)
        return expanded.reshape(*kv.shape[:-2], -1)


def attention_module(layer: nn.Module, family: str) -> nn.Module:
    return layer.attn if family == "gpt2" else layer.self_attn


@contextlib.contextmanager
def eager_attention(model: PreTrainedModel) -> Iterator[None]:
    """Switch the model to eager attention (the only one that returns attention weights)."""
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)


def check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"unknown head-pruning criterion {criterion!r}; criteria: {', '.join(CRITERIA)}")


def per_query_max(attentions: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Per-query-max sums: Σ over counted queries of each query's largest weight, [heads].

    attentions: [batch, heads, queries, keys]; counted: [batch, queries] (fp64, 1 = counted).
    """
    return torch.einsum("bhq,bq->h", attentions.amax(dim=-1), counted)


def single_key_share(
    attentions: torch.Tensor, counted: torch.Tensor, key_mask: torch.Tensor, min_viewers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-key-share sums over sentences, [heads], and how many sentences counted.

    For sentence s, head h and key k, the share k receives is the mean of attention(s, h, q, k)
    over the counted queries q that can see k (q >= k: causal). A sentence's score for h is the
    largest share over its keys. Keys seen by fewer than `min_viewers` counted queries are left
    out, as the first queries are (DEFAULT_MIN_QUERY_POSITION): a key seen by a single query
    would make any head attending to itself look concentrated.
    """
    n_queries, n_keys = attentions.shape[-2:]
    visible = torch.tril(torch.ones(n_queries, n_keys, dtype=counted.dtype, device=counted.device))
    received = torch.einsum("bhqk,bq->bhk", attentions, counted)
    viewers = torch.einsum("bq,qk->bk", counted, visible) * key_mask
    eligible = viewers >= min_viewers  # [batch, keys]
    share = torch.where(eligible[:, None, :], received / viewers.clamp(min=1)[:, None, :], -1.0)
    scored = eligible.any(dim=-1)  # sentences with at least one eligible key
    return share.amax(dim=-1)[scored].sum(dim=0), int(scored.sum())


@torch.no_grad()
def head_attention_concentration(
    model: PreTrainedModel,
    calibration_ids: torch.Tensor,
    batch_size: int = 4,
    attention_mask: torch.Tensor | None = None,
    min_query_position: int = DEFAULT_MIN_QUERY_POSITION,
    criterion: str = DEFAULT_CRITERION,
) -> torch.Tensor:
    """How much each head's attention goes to a single key, shape [n_layers, n_heads].

    `single-key-share` (default): per sentence, the largest mean attention one key receives
    from the counted queries that see it (keys seen by fewer than `min_query_position` counted
    queries left out), averaged over sentences. `per-query-max`: for sentence s, head h and
    query q, top(s, h, q) = max over keys of attention(s, h, q, k), pooled over all counted
    (s, q) pairs. Counted queries: q >= `min_query_position` (the first queries see only a few
    keys, so their attention is trivially concentrated) and q is not padding.

    Padding: `attention_mask` ([n_sentences, length], 1 = real token) marks padding; padded
    query positions are left out and the model masks padded keys itself. Positions are counted
    from the start of the row, so use right padding for `min_query_position` to mean the same
    thing in every sentence. Without a mask every token is real.

    For GQA models the heads are the query heads. The model is switched to eager attention
    for the measurement (sdpa returns no attention weights) and switched back afterwards.
    Every layer must have the same number of heads (an unpruned model).
    """
    check_criterion(criterion)
    heads = heads_per_layer(model)
    if len(set(heads)) != 1:
        raise ValueError(f"concentration needs the same head count in every layer, got {heads}")
    if calibration_ids.dim() != 2:
        raise ValueError("calibration_ids must be [n_sentences, length]")
    if calibration_ids.shape[1] <= min_query_position:
        raise ValueError(
            f"sentences of {calibration_ids.shape[1]} tokens have no query position "
            f">= min_query_position={min_query_position}"
        )
    if attention_mask is None:
        attention_mask = torch.ones_like(calibration_ids)
    device = next(model.parameters()).device
    sums = torch.zeros(len(heads), heads[0], dtype=torch.float64)
    n_counted = 0
    was_training = model.training
    model.eval()
    with eager_attention(model):
        for start in range(0, calibration_ids.shape[0], batch_size):
            ids = calibration_ids[start : start + batch_size].to(device)
            mask = attention_mask[start : start + batch_size].to(device)
            outputs = model(
                input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False
            )
            counted = mask.bool().clone()
            counted[:, :min_query_position] = False
            counted_f = counted.to(torch.float64)
            for layer_index, attentions in enumerate(outputs.attentions):
                weights = attentions.to(torch.float64)
                if criterion == PER_QUERY_MAX:
                    sums[layer_index] += per_query_max(weights, counted_f).cpu()
                else:
                    layer_sums, sentences = single_key_share(
                        weights, counted_f, mask.to(torch.float64), min_query_position
                    )
                    sums[layer_index] += layer_sums.cpu()
            # per-query-max averages over counted queries, single-key-share over sentences
            n_counted += int(counted.sum()) if criterion == PER_QUERY_MAX else sentences
    model.train(was_training)
    if n_counted == 0:
        raise ValueError("no query position was counted (all padding or too short)")
    return (sums / n_counted).to(torch.float32)


def select_heads_to_prune(concentration: torch.Tensor, threshold: float) -> HeadSpec:
    """Heads whose concentration is above `threshold` (paper: 0.9 for ah90, 0.8 for ah80).

    Returns {layer: sorted head indices}, only layers with at least one head to prune. A layer
    is never emptied: when every head of a layer is above the threshold, its least
    concentrated head is kept (a layer without attention heads is not supported).
    """
    heads: HeadSpec = {}
    for layer_index, layer_concentration in enumerate(concentration):
        above = layer_concentration > threshold
        if bool(above.all()):
            above[int(layer_concentration.argmin())] = False
        selected = [int(h) for h in torch.nonzero(above).flatten()]
        if selected:
            heads[layer_index] = selected
    return heads


def _select_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data[rows].clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data[rows].clone())
    linear.out_features = len(rows)


def _select_columns(linear: nn.Linear, columns: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data[:, columns].clone())
    linear.in_features = len(columns)


def _head_slices(positions: list[int], head_dim: int, device: torch.device) -> torch.Tensor:
    """Indices of the features of the heads at `positions` in a [heads * head_dim] axis."""
    return torch.tensor(
        [p * head_dim + i for p in positions for i in range(head_dim)], dtype=torch.long, device=device
    )


def _check_projection(module: nn.Module, name: str) -> None:
    weight = getattr(module, "weight", None)
    if not isinstance(module, nn.Linear | Conv1D) or weight is None or not weight.is_floating_point():
        raise TypeError(
            f"cannot remove heads from {name} of type {type(module).__name__}: prune heads "
            "before quantizing (the recipe order is distil, prune, quantize)"
        )


def _original_head_count(config: PretrainedConfig) -> int:
    return config.n_head if config.model_type == "gpt2" else config.num_attention_heads


def _head_dim(config: PretrainedConfig) -> int:
    head_dim = getattr(config, "head_dim", None)
    return head_dim if isinstance(head_dim, int) else config.hidden_size // _original_head_count(config)


def _kept_heads(attention: nn.Module, n_heads: int) -> list[int]:
    return list(getattr(attention, "kept_heads", range(n_heads)))


def _remove_gpt2_heads(attention: nn.Module, keep_positions: list[int], head_dim: int) -> None:
    _check_projection(attention.c_attn, "c_attn")
    _check_projection(attention.c_proj, "c_proj")
    device = attention.c_attn.weight.device
    width = attention.split_size  # current q (= k = v) width
    kept = _head_slices(keep_positions, head_dim, device)
    qkv_columns = torch.cat([kept, kept + width, kept + 2 * width])
    c_attn = attention.c_attn  # Conv1D: weight [in, out], so output features are columns
    c_attn.weight = nn.Parameter(c_attn.weight.data[:, qkv_columns].clone())
    c_attn.bias = nn.Parameter(c_attn.bias.data[qkv_columns].clone())
    c_attn.nf = len(qkv_columns)
    c_proj = attention.c_proj  # input features are rows
    c_proj.weight = nn.Parameter(c_proj.weight.data[kept].clone())
    attention.split_size = len(kept)
    attention.num_heads = len(keep_positions)


def _remove_opt_heads(attention: nn.Module, keep_positions: list[int], head_dim: int) -> None:
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        _check_projection(getattr(attention, name), name)
    kept = _head_slices(keep_positions, head_dim, attention.q_proj.weight.device)
    for name in ("q_proj", "k_proj", "v_proj"):
        _select_rows(getattr(attention, name), kept)
    _select_columns(attention.out_proj, kept)
    attention.num_heads = len(keep_positions)


def _kv_projection(module: nn.Module) -> nn.Linear:
    return module.projection if isinstance(module, KeyValueHeadExpansion) else module


def _remove_llama_heads(
    attention: nn.Module, kept_heads: list[int], new_kept_heads: list[int], config: PretrainedConfig
) -> None:
    if hasattr(attention, "qkv_proj"):
        raise NotImplementedError("fused qkv_proj (Phi-3) is not supported by head pruning")
    head_dim = attention.head_dim
    group_size = config.num_attention_heads // config.num_key_value_heads
    kept_kv = list(getattr(attention, "kept_kv_heads", range(config.num_key_value_heads)))
    new_kept_kv = sorted({h // group_size for h in new_kept_heads})
    for name in ("q_proj", "o_proj"):
        _check_projection(getattr(attention, name), name)
    key, value = _kv_projection(attention.k_proj), _kv_projection(attention.v_proj)
    _check_projection(key, "k_proj")
    _check_projection(value, "v_proj")

    device = attention.q_proj.weight.device
    q_positions = [kept_heads.index(h) for h in new_kept_heads]
    q_features = _head_slices(q_positions, head_dim, device)
    _select_rows(attention.q_proj, q_features)
    _select_columns(attention.o_proj, q_features)
    kv_features = _head_slices([kept_kv.index(g) for g in new_kept_kv], head_dim, device)
    _select_rows(key, kv_features)
    _select_rows(value, kv_features)

    queries_per_kv = [sum(1 for h in new_kept_heads if h // group_size == g) for g in new_kept_kv]
    if len(set(queries_per_kv)) == 1:
        # Query heads stay ordered by group, so uniform groups still fit repeat_kv.
        attention.k_proj, attention.v_proj = key, value
        attention.num_key_value_groups = queries_per_kv[0]
    else:
        kv_of_query = [new_kept_kv.index(h // group_size) for h in new_kept_heads]
        attention.k_proj = KeyValueHeadExpansion(key, kv_of_query, head_dim)
        attention.v_proj = KeyValueHeadExpansion(value, kv_of_query, head_dim)
        attention.num_key_value_groups = 1
    attention.kept_kv_heads = new_kept_kv
    attention.num_heads = len(new_kept_heads)
    attention.num_key_value_heads = len(new_kept_kv)


def remove_heads(model: PreTrainedModel, heads: HeadSpec) -> None:
    """Physically remove attention heads, in place.

    `heads` maps a layer index to the ORIGINAL indices (in the unpruned model) of the query
    heads to remove. Heads already removed are an error, and so is removing every head of a
    layer. See the module docstring for what is sliced per architecture.
    """
    family = model_family(model)
    config = model.config
    n_heads = _original_head_count(config)
    head_dim = _head_dim(config)
    layers = decoder_layers(model)
    for layer_index, removed in sorted(heads.items()):
        if not removed:
            continue
        if not 0 <= layer_index < len(layers):
            raise ValueError(f"layer {layer_index} does not exist ({len(layers)} layers)")
        attention = attention_module(layers[layer_index], family)
        kept_heads = _kept_heads(attention, n_heads)
        missing = sorted(set(removed) - set(kept_heads))
        if missing:
            raise ValueError(f"layer {layer_index}: heads {missing} are not present (kept: {kept_heads})")
        removed_set = set(removed)
        new_kept_heads = [h for h in kept_heads if h not in removed_set]
        if not new_kept_heads:
            raise ValueError(f"layer {layer_index}: removing heads {sorted(removed)} would leave no head")
        if family == "gpt2":
            _remove_gpt2_heads(attention, [kept_heads.index(h) for h in new_kept_heads], head_dim)
        elif family == "opt":
            _remove_opt_heads(attention, [kept_heads.index(h) for h in new_kept_heads], head_dim)
        else:
            _remove_llama_heads(attention, kept_heads, new_kept_heads, config)
        attention.kept_heads = new_kept_heads


def heads_per_layer(model: PreTrainedModel) -> list[int]:
    """The current number of query heads in each layer."""
    family = model_family(model)
    n_heads = _original_head_count(model.config)
    return [len(_kept_heads(attention_module(layer, family), n_heads)) for layer in decoder_layers(model)]


def pruned_head_spec(model: PreTrainedModel) -> HeadSpec:
    """The heads removed so far, per layer, in original indices (what `save_head_spec` wants)."""
    family = model_family(model)
    n_heads = _original_head_count(model.config)
    spec: HeadSpec = {}
    for layer_index, layer in enumerate(decoder_layers(model)):
        kept = set(_kept_heads(attention_module(layer, family), n_heads))
        removed = [h for h in range(n_heads) if h not in kept]
        if removed:
            spec[layer_index] = removed
    return spec


def _qkv_has_bias(config: PretrainedConfig) -> bool:
    if config.model_type == "gpt2":
        return True
    if config.model_type == "opt":
        return bool(config.enable_bias)
    if config.model_type == "qwen2":
        return True  # Qwen2 always biases q, k and v (and never o)
    return bool(getattr(config, "attention_bias", False))


def removed_parameter_count(config: PretrainedConfig, heads: HeadSpec) -> int:
    """Parameters that `remove_heads(model, heads)` removes from an unpruned model of `config`.

    Per removed query head: its q (and, without GQA, k and v) rows with their biases, and its
    output-projection columns (the output bias stays). For GQA, each KV head whose whole group
    is removed adds its k and v rows with their biases.
    """
    hidden, head_dim = config.hidden_size, _head_dim(config)
    projection = hidden * head_dim + (head_dim if _qkv_has_bias(config) else 0)
    output_projection = head_dim * hidden
    total = 0
    for removed in heads.values():
        removed_set = set(removed)
        if config.model_type in ("gpt2", "opt"):
            total += len(removed_set) * (3 * projection + output_projection)
            continue
        group_size = config.num_attention_heads // config.num_key_value_heads
        removed_groups = sum(
            1
            for g in range(config.num_key_value_heads)
            if all(h in removed_set for h in range(g * group_size, (g + 1) * group_size))
        )
        total += len(removed_set) * (projection + output_projection) + removed_groups * 2 * projection
    return total


def save_head_spec(directory: Path, heads: HeadSpec) -> None:
    """Write the removed heads (original indices) next to the saved model."""
    spec = {str(layer): sorted(int(h) for h in removed) for layer, removed in sorted(heads.items()) if removed}
    (Path(directory) / HEAD_SPEC_FILE).write_text(json.dumps({"pruned_heads": spec}, indent=2) + "\n")


def read_head_spec(directory: Path) -> HeadSpec | None:
    """The removed heads saved by `save_head_spec`, or None when the model was not head-pruned."""
    path = Path(directory) / HEAD_SPEC_FILE
    if not path.exists():
        return None
    spec = json.loads(path.read_text())["pruned_heads"]
    return {int(layer): [int(h) for h in removed] for layer, removed in spec.items()}


def _read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {directory}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    return state


def load_head_pruned(
    directory: Path, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"
) -> PreTrainedModel:
    """Load a model saved with `save_pretrained` + `save_head_spec`.

    Builds the unpruned model from the saved config, removes the saved heads, then loads the
    saved weights strictly: every key must match, except parameters tied to a loaded one
    (tied embeddings are saved once).
    """
    directory = Path(directory)
    heads = read_head_spec(directory)
    if heads is None:
        raise FileNotFoundError(f"{directory / HEAD_SPEC_FILE} not found: not a head-pruned model")
    config = AutoConfig.from_pretrained(directory)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    remove_heads(model, heads)
    state = _read_safetensors(directory)
    result = model.load_state_dict(state, strict=False)
    expected = model.state_dict()
    loaded_storage = {expected[key].data_ptr() for key in state if key in expected}
    untied_missing = [key for key in result.missing_keys if expected[key].data_ptr() not in loaded_storage]
    if untied_missing or result.unexpected_keys:
        raise ValueError(
            f"weights in {directory} do not match the pruned model: missing {untied_missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    if (directory / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(directory)
    return model.eval()
