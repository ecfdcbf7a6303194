"""A store writer run as its own process by the fault tests: commits one artifact over and over
(tiny weights, real safetensors), so tests can race two of them or SIGKILL one mid-commit.

    python -m llmopt_assets_tests.store_writer ROOT COUNT SEED   (COUNT 0: until killed)
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from llmopt_assets.models.store import ModelStore


class TinyWeights:
    """Duck-typed model for write_weights: a few floats saved as model.safetensors."""

    def __init__(self, seed: int) -> None:
        self.array = torch.randn(16, generator=torch.Generator().manual_seed(seed))

    def save_pretrained(self, directory: Path, safe_serialization: bool = True) -> None:
        save_file({"weight": self.array}, str(Path(directory) / "model.safetensors"))

    def parameters(self):
        return [self.array]


class NoTokenizer:
    def save_pretrained(self, directory: Path) -> None:
        (Path(directory) / "tokenizer.json").write_text("{}")


def commit(store: ModelStore, seed: int):
    return store.write_weights(
        "tiny", "base", TinyWeights(seed), NoTokenizer(), recipe=[{"step": "load", "seed": seed}],
        parent_fingerprint=None,
    )


def main(root: str, count: int, seed: int) -> int:
    store = ModelStore(Path(root))
    failures = 0
    index = 0
    while count == 0 or index < count:
        try:
            commit(store, seed * 1_000_000 + index)
        except Exception as error:  # counted: the race test wants 0
            failures += 1
            if failures <= 5:
                print(f"commit {index}: {error!r}", file=sys.stderr)
        index += 1
    print(f"failures={failures}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
