"""Tiny GPT-2, OPT and Llama models built from config in milliseconds, for tests."""

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedModel,
)

ARCHITECTURES = ("gpt2", "opt", "llama")
VOCAB_SIZE = 160


def tiny_config(arch: str, attn_implementation: str = "eager") -> PretrainedConfig:
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=VOCAB_SIZE, n_positions=128, n_embd=32, n_layer=4, n_head=4,
            bos_token_id=0, eos_token_id=0,
        )
    elif arch == "opt":
        config = OPTConfig(
            vocab_size=VOCAB_SIZE,
            max_position_embeddings=128,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            ffn_dim=64,
            word_embed_proj_dim=32,
            pad_token_id=1,
            bos_token_id=2,
            eos_token_id=2,
        )
    elif arch == "llama":
        # Grouped-query attention (4 query heads share 2 KV heads), like SmolLM2.
        config = LlamaConfig(
            vocab_size=VOCAB_SIZE,
            max_position_embeddings=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; known: {ARCHITECTURES}")
    config._attn_implementation = attn_implementation
    return config


def tiny_model(arch: str, seed: int = 0, attn_implementation: str = "eager") -> PreTrainedModel:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        tiny_config(arch, attn_implementation), attn_implementation=attn_implementation
    )
    return model.eval()


def random_token_ids(n_sequences: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB_SIZE, (n_sequences, length), generator=generator)


def tiny_tokenizer(text: str | None = None):
    """A BPE tokenizer with VOCAB_SIZE tokens trained in milliseconds on a little WikiText."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmopt_assets.measure.corpus import WIKITEXT2_VALID

    if text is None:
        text = WIKITEXT2_VALID.read_text(encoding="utf-8")[:20000]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<unk>", "<pad>", "<s>"],
        initial_alphabet=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="<s>"
    )


def fit_briefly(model: PreTrainedModel, token_ids: torch.Tensor, steps: int = 20, seed: int = 0) -> PreTrainedModel:
    """A few Adam steps of next-token training on `token_ids`: enough for a random tiny model to
    beat a uniform guess over its vocabulary, as any real model does."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(token_ids) - 129, (8,), generator=generator)
        batch = torch.stack([token_ids[s : s + 128] for s in starts])
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
