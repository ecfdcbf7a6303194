"""Partition keys that become paths: every key is a valid single path component or a clear error.

A model slug or technique key names a directory in the store, a Parquet file in the tables and a
chart in the reports; `../../x`, '' or 'a/b' must never reach a path join.
"""

import re
from pathlib import Path

# One path component: starts with a letter or digit, and an underscore is never doubled nor last,
# so "__" can join the parts of a multi-dimensional key into one file name without ambiguity.
_PART = r"[a-z0-9](?:[a-z0-9.:+-]|_(?=[a-z0-9.:+-]))*"
MODEL_SLUG = re.compile(rf"(?=[a-z0-9._-]{{1,63}}$){_PART}")  # models.yaml slugs, path-safe
# Technique keys and the store's weights keys: 'kd+int8+ah90', 'sparsegpt-2:4', 'kd-rkl'.
TECHNIQUE_KEY = re.compile(rf"(?=.{{1,128}}$){_PART}")
PARTITION_PART = TECHNIQUE_KEY  # any dimension's key: as permissive as a technique key, no more
PARTITION_JOINER = "__"  # "model|technique" -> "model__technique" in file names


class InvalidKeyError(ValueError):
    """A partition key that is not a model slug / technique key (and so never a path)."""


KEY_CHARACTERS = "lowercase letters, digits, '.:+-' and single '_', starting with a letter or digit"


def _checked(value: object, pattern: re.Pattern, refusal: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidKeyError(refusal)
    return value


def check_model_slug(value: object) -> str:
    return _checked(value, MODEL_SLUG, f"model key {value!r} is not a model slug (1-63 {KEY_CHARACTERS}, no "
                    "':' or '+'): add the model to models.yaml and use its slug")


def check_technique_key(value: object) -> str:
    return _checked(value, TECHNIQUE_KEY, f"technique key {value!r} is not a technique key ({KEY_CHARACTERS})")


def partition_file_stem(partition_key: str) -> str:
    """A file name for a (multi-)partition key: 'gpt2|int8' -> 'gpt2__int8'; one-to-one, and
    never a path: any other key is refused."""
    parts = partition_key.split("|") if isinstance(partition_key, str) else [partition_key]
    for part in parts:
        _checked(part, PARTITION_PART, f"partition key {partition_key!r} cannot name a file: {part!r} is not a "
                 f"key ({KEY_CHARACTERS})")
    return PARTITION_JOINER.join(parts)


def inside(root: Path, path: Path) -> Path:
    """`path` if it resolves to a place under `root`; a second guard behind the key checks."""
    resolved_root = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise InvalidKeyError(f"{path} resolves outside {root}: refused")
    return path
