"""Partition keys that become paths: every key is a valid single path component or a clear error.

A model slug or technique key names a directory in the store, a Parquet file in the tables and a
chart in the reports; `../../x`, '' or 'a/b' must never reach a path join.
"""

import re
from pathlib import Path

MODEL_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")  # as models.yaml slugs (registry.SLUG)
# Technique keys and the store's weights keys: 'kd+int8+ah90', 'sparsegpt-2:4', 'kd-rkl'.
TECHNIQUE_KEY = re.compile(r"^[a-z0-9][a-z0-9.:+_-]{0,127}$")


class InvalidKeyError(ValueError):
    """A partition key that is not a model slug / technique key (and so never a path)."""


def check_model_slug(value: object) -> str:
    if not isinstance(value, str) or not MODEL_SLUG.fullmatch(value):
        raise InvalidKeyError(
            f"model key {value!r} is not a model slug (1-63 of lowercase letters, digits, '.', '_', "
            "'-', starting with a letter or digit): add the model to models.yaml and use its slug"
        )
    return value


def check_technique_key(value: object) -> str:
    if not isinstance(value, str) or not TECHNIQUE_KEY.fullmatch(value):
        raise InvalidKeyError(
            f"technique key {value!r} is not a technique key (lowercase letters, digits and "
            "'.:+_-', starting with a letter or digit)"
        )
    return value


def inside(root: Path, path: Path) -> Path:
    """`path` if it resolves to a place under `root`; a second guard behind the key checks."""
    resolved_root = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise InvalidKeyError(f"{path} resolves outside {root}: refused")
    return path
