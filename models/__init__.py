"""Score networks: the model registry and the wrappers that turn a network into a score function.

Each registered network class is built from keyword arguments and offers `from_config(config)` for the published
call (the runners use it, `runners/build.py`).

Continuous training (`training.continuous=True`, as in every published experiment): the network is conditioned
on the marginal std of the SDE at time `t` (σ(t) for VE-SDE) and its output *is* the score — there is no division
by the std afterwards.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from utils.common import Registry

MODELS: Registry[type[nn.Module]] = Registry("model")

# Importing the network modules registers them in MODELS.
from models import ddpm, ncsnpp  # noqa: E402,F401

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def get_model_fn(model: nn.Module, train: bool = False) -> ModelFn:
    """`model_fn(x [B, C, H, W], labels [B]) -> [B, C, H, W]`, with the model in train or eval mode."""

    def model_fn(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if model.training != train:
            model.train(train)
        return model(x, labels)

    return model_fn


def get_score_fn(sde, model: nn.Module, train: bool = False, continuous: bool = True, bf16: bool = False) -> ModelFn:
    """`score_fn(x [B, C, H, W], t [B]) -> score [B, C, H, W]`: the network at labels `sde.marginal_std(t)`.

    `bf16` runs the network under bfloat16 autocast (on the device of `x`) and returns the score as float32.
    """
    if not continuous:
        raise ValueError("only continuous-time score networks are supported: set training.continuous=True "
                         "(as in all published HFS-SDE, VP-SDE and VE-SDE experiments)")
    model_fn = get_model_fn(model, train=train)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model_fn(x, sde.marginal_std(t))

    def bf16_score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            return score_fn(x, t).float()

    return bf16_score_fn if bf16 else score_fn
