"""Small helpers used across the package: a name registry, broadcasting, seeding."""
from __future__ import annotations

import logging
import random
from typing import Callable, Generic, TypeVar

import numpy as np
import torch

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes or functions; one instance each for models, predictors and correctors."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {sorted(self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)


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


def cuda_speed_options(config, group: str) -> tuple[bool, bool]:
    """`(bf16, compile)` of `config.<group>`, switched off with a warning when `config.device` is not CUDA."""
    options = getattr(config, group)
    bf16, compile_ = bool(options.bf16), bool(options.compile)
    if not str(config.device).startswith("cuda"):
        for key, on in ((f"{group}.bf16", bf16), (f"{group}.compile", compile_)):
            if on:
                logging.warning("%s=True needs CUDA (config.device=%r); it is ignored", key, config.device)
        return False, False
    return bf16, compile_
