"""Small helpers used across the package: a name registry, broadcasting, seeding."""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

import numpy as np
import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered item: its `name`, the `item` itself (a class or function), a `label` for tables and figure
    titles, its `kind` (e.g. "diffusion" or "baseline") and the frozen `settings` class it is called with."""

    name: str
    item: T
    label: str
    kind: str = ""
    settings: type | None = None


class Registry(Generic[T]):
    """Maps names to classes or functions with their label, kind and settings class (`Entry`); one instance per kind
    of thing (models, SDEs, samplers, baselines, predictors, correctors, optimisers). `kind` names the config key
    that selects from it, for messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, label: str | None = None, kind: str = "",
                 settings: type | None = None) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            self.add(Entry(name, item, label or name, kind, settings))
            return item

        return decorator

    def add(self, entry: Entry[T]) -> None:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self._entries[entry.name] = entry

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {self.names()}")
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).item

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    @classmethod
    def union(cls, kind: str, *registries: "Registry[T]") -> "Registry[T]":
        """One registry holding the entries of `registries` (names must be distinct)."""
        merged: Registry[T] = cls(kind)
        for registry in registries:
            for entry in registry._entries.values():
                merged.add(entry)
        return merged


def check_setting(key: str, value, ok: bool, allowed: str) -> None:
    """Raise a ValueError naming config key `key`, its `value` and the `allowed` values unless `ok`."""
    if not ok:
        raise ValueError(f"{key}={value!r} is not allowed: {allowed}")


def finite_at_least(value, low: float) -> bool:
    """Whether `value` is a finite number ≥ `low` (False for NaN)."""
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= low


def whole_between(value, low: int, high: float = math.inf) -> bool:
    """Whether `value` is a whole number (an int, not a bool) with `low` ≤ `value` ≤ `high`."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def finite_above(value, low: float) -> bool:
    """Whether `value` is a finite number > `low` (False for NaN)."""
    return finite_at_least(value, low) and value > low


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions to `v` until it has `ndim` dimensions (for broadcasting `[B]`)."""
    if v.ndim > ndim:
        raise ValueError(f"tensor has {v.ndim} dimensions, more than the target {ndim}")
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def derived_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer `keys` (e.g. seed, epoch, rank), distinct for distinct keys."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cuda_speed_options(device: str, group: str, bf16: bool, compile_: bool) -> tuple[bool, bool]:
    """`(bf16, compile)` as asked, switched off with a warning (naming `<group>.bf16` / `<group>.compile`) when
    `device` is not CUDA."""
    bf16, compile_ = bool(bf16), bool(compile_)
    if not str(device).startswith("cuda"):
        for key, on in ((f"{group}.bf16", bf16), (f"{group}.compile", compile_)):
            if on:
                logging.warning("%s=True needs CUDA (device=%r); it is ignored", key, device)
        return False, False
    return bf16, compile_
