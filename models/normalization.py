"""Normalisation layers of the score networks.

DDPM normalises with GroupNorm over 32 groups (eps 1e-6) everywhere, NCSN++ with GroupNorm too (fewer groups on
narrow layers); `model.normalization` must name it.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

NUM_GROUPS = 32
EPS = 1e-6


def group_norm(num_channels: int) -> nn.GroupNorm:
    """GroupNorm with DDPM's 32 groups over `num_channels` channels (`[B, C, H, W]` → same shape)."""
    if num_channels % NUM_GROUPS:
        raise ValueError(f"GroupNorm with {NUM_GROUPS} groups needs a channel count divisible by {NUM_GROUPS}, "
                         f"got {num_channels}")
    return nn.GroupNorm(num_groups=NUM_GROUPS, num_channels=num_channels, eps=EPS)


def get_normalization(name: str) -> Callable[[int], nn.Module]:
    """The normalisation layer factory named `name` (`model.normalization`; only "GroupNorm")."""
    if name.lower() != "groupnorm":
        raise ValueError(f"model.normalization={name!r} is not supported by the score networks; use 'GroupNorm'")
    return group_norm
