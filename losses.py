"""Optimiser, denoising score-matching loss and the one-step train/eval function.

The continuous score-matching loss, with `t ~ U(eps, 1)`, `z ~ N(0, I)` and `P` the SDE's noise
projection (`M̂` for HFS-SDE, identity otherwise):

    x_t = mean(x_0, t) + std(t)·P z
    loss = reduce((std·P s(x_t, t) + P z)²)                     (default weighting)
    loss = reduce((P s(x_t, t) + P z / std)²) · g(t)²            (training.likelihood_weighting)

so HFS-SDE is trained in high-frequency space only, and VP/VE reduce to score_sde's loss.
"""
from __future__ import annotations

import torch

from models import get_score_fn
from utils.common import Registry, append_dims

OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optim.optimizer")
OPTIMIZERS.register("Adam", label="Adam")(torch.optim.Adam)
OPTIMIZERS.register("AdamW", label="AdamW")(torch.optim.AdamW)


class NonFiniteLossError(RuntimeError):
    """Raised before an optimiser step whose loss is NaN or infinite (the model is left untouched)."""


def _finite_everywhere(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (all ranks then stop together instead of hanging in all-reduce)."""
    finite = torch.isfinite(loss.detach()).to(torch.int32)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite)


def get_optimizer(name: str, params, lr: float, beta1: float, eps: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimiser `name` of `OPTIMIZERS` (Adam as published, or AdamW) with `betas = (beta1, 0.999)`."""
    return OPTIMIZERS.get(name)(params, lr=lr, betas=(beta1, 0.999), eps=eps, weight_decay=weight_decay)


def optimization_manager(lr: float, warmup: int, grad_clip: float):
    """`optimize_fn(optimizer, params, step) -> grad norm`: linear warm-up over `warmup` steps to `lr`, gradient
    clipping at norm `grad_clip` (none when negative), optimiser step."""

    def optimize_fn(optimizer, params, step: int) -> torch.Tensor:
        if warmup > 0:
            for group in optimizer.param_groups:
                group["lr"] = lr * min(step / warmup, 1.0)
        params = list(params)
        max_norm = grad_clip if grad_clip >= 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm)
        optimizer.step()
        return grad_norm

    return optimize_fn


def get_sde_loss_fn(sde, train: bool, reduce_mean: bool = True, continuous: bool = True,
                    likelihood_weighting: bool = False, eps: float = 1e-5, bf16: bool = False):
    """`loss_fn(model, batch) -> scalar`: the continuous denoising score-matching loss of the module docstring.

    `batch` is the clean real image `[B, 2, H, W]`; `reduce_mean` averages over pixels (else ½·sum); `bf16` runs
    the network under bfloat16 autocast.
    """
    def reduce_op(v):
        v = v.flatten(1)
        return v.mean(1) if reduce_mean else 0.5 * v.sum(1)

    def loss_fn(model, batch: torch.Tensor) -> torch.Tensor:
        score_fn = get_score_fn(sde, model, train=train, continuous=continuous, bf16=bf16)
        t = torch.rand(batch.shape[0], device=batch.device) * (sde.T - eps) + eps
        z = sde.project(torch.randn_like(batch))
        mean, std = sde.marginal_prob(batch, t)
        std = append_dims(std, batch.ndim)
        score = sde.project(score_fn(mean + std * z, t))
        if likelihood_weighting:
            g2 = sde.sde(torch.zeros_like(batch), t)[1] ** 2
            losses = reduce_op(torch.square(score + z / std)) * g2
        else:
            losses = reduce_op(torch.square(score * std + z))
        return losses.mean()

    return loss_fn


def get_step_fn(sde, train: bool, optimize_fn=None, reduce_mean: bool = True, continuous: bool = True,
                likelihood_weighting: bool = False, eps: float = 1e-5, bf16: bool = False):
    """`step_fn(state, batch) -> dict` for one training or evaluation step.

    `state` holds `model`, `optimizer`, `ema` and `step`. Training: loss, backward, warm-up/clipping/step, EMA
    update, `step += 1`; returns `{"loss", "grad_norm"}`. Evaluation: loss with the EMA weights, returns `{"loss"}`.
    `bf16` runs the network under bfloat16 autocast (CUDA).
    """
    loss_fn = get_sde_loss_fn(sde, train, reduce_mean=reduce_mean, continuous=continuous,
                              likelihood_weighting=likelihood_weighting, eps=eps, bf16=bf16)

    def step_fn(state: dict, batch: torch.Tensor) -> dict:
        model = state["model"]
        if train:
            optimizer = state["optimizer"]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            if not _finite_everywhere(loss):
                raise NonFiniteLossError(f"the training loss became {loss.item()} at step {state['step']} "
                                         "(on this process or another rank)")
            loss.backward()
            grad_norm = optimize_fn(optimizer, model.parameters(), step=state["step"])
            state["step"] += 1
            state["ema"].update(model.parameters())
            return {"loss": loss.detach(), "grad_norm": grad_norm.detach()}
        with torch.no_grad(), state["ema"].average_parameters(model.parameters()):
            loss = loss_fn(model, batch)
        return {"loss": loss.detach()}

    return step_fn
