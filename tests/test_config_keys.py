"""Every key of the default config is read somewhere in the code (no settings that silently do nothing)."""
from __future__ import annotations

import os
import re

import ml_collections

from configs.default_fastMRI_configs import get_default_configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Groups whose keys are names looked up by value (`data.test_roots[sampling.datashift]`), not read one by one.
NAME_MAPS = {"data.test_roots", "data.test_maps_roots"}


def leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Dotted paths of the config's keys: every leaf, and each name map as one key."""
    keys = []
    for name, value in config.items():
        path = prefix + name
        if isinstance(value, ml_collections.ConfigDict) and path not in NAME_MAPS:
            keys += leaf_keys(value, path + ".")
        else:
            keys.append(path)
    return keys


def code_text() -> str:
    """The project's Python source, without the configs that define the keys and the tests."""
    parts = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("configs", "tests", "bench", "__pycache__")]
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    parts.append(f.read())
    return "\n".join(parts)


def is_read(key: str, text: str) -> bool:
    """Whether the last name of `key` is read as an attribute (`.key`) or by name (`"key"`, `'key'`)."""
    name = re.escape(key.rsplit(".", 1)[-1])
    return re.search(rf"\.{name}\b|[\"']{name}[\"']", text) is not None


def test_every_default_key_is_read():
    text = code_text()
    unread = [key for key in leaf_keys(get_default_configs()) if not is_read(key, text)]
    assert not unread, f"config keys read nowhere in the code (remove them or use them): {unread}"


def test_unread_keys_are_removed_and_found():
    keys = set(leaf_keys(get_default_configs()))
    assert not keys & {"sampling.probability_flow", "data.dataset_name", "data.random_flip"}
    assert is_read("sampling.N", "steps = config.sampling.N") and is_read("data.augment.flip", 'settings["flip"]')
    assert not is_read("data.random_flip", "flip = config.data.random_flips")
