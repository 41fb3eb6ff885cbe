"""The measurement noise level of undersampled multi-coil k-space, estimated from the data themselves.

With `C` coils the measured samples over-determine the image: `m = C·|M|` complex samples against `n` unknown
pixels (those the coil maps see, `Σ_c |S_c|² > 0`). The least-squares SENSE fit `x̂ = argmin ‖A x − y‖²` leaves
the part of the data that no image explains, which for `y = A x + ν` with white noise of variance `σ² = E|ν|²`
per complex sample has the expected energy `σ² (m − n)`. Hence

    σ̂² = ‖A x̂ − y‖² / (m − n),

the regression estimate of the noise, computed with `iters` conjugate-gradient steps on the normal equations from
zero (CG minimises the residual over a growing subspace, so stopping early can only raise σ̂). Errors of the coil
maps leave a residual of their own and raise σ̂ too: the estimate is the *effective* noise of the SENSE model of
these data, which is what a data-consistency weight must respect. It needs no noise-only region: it works for
objects that fill the field of view, for an oversampled readout cropped in the image domain (white noise stays
white with the same variance per sample), and at any undersampling as long as `m > n` (`m ≤ n`: σ̂ = 0, no
information). Noise correlated between coils raises the residual along with the noise it adds: σ̂ stays the
effective per-sample level, without a pre-whitening step (the shift benchmark has a correlated-coil row).

Pseudo-replicas (`replica_variance`): how much of that noise a reconstruction carries. With `R` the response of
the reconstruction to a change of its data (k-space → image; linear, or equivariant to a phase factor as truncated
CG is), the noise part of the image is `R ν`; drawing `ν_r ~ CN(0, σ̂²)` on the measured samples (real and imaginary
parts of variance σ̂²/2 each) estimates the per-pixel variance of the image's magnitude to first order,

    var_noise(p) = mean_r |(R ν_r)_p|² / 2:

the magnitude moves with the noise component along the image's phase, and circular noise puts half of its power
into any one direction.
"""
from __future__ import annotations

from typing import Callable

import torch

from utils.common import append_dims
from utils.mri import conjugate_gradient, sense_adjoint, sense_forward, sense_normal

NOISE_ITERS = 30  # conjugate-gradient steps of the least-squares fit


def _support(csm: torch.Tensor) -> torch.Tensor:
    return (csm.abs().square().sum(dim=1, keepdim=True) > 0).to(csm.real.dtype)


def sense_residual(y: torch.Tensor, csm: torch.Tensor, mask: torch.Tensor, iters: int = NOISE_ITERS) -> torch.Tensor:
    """The residual `A x̂ − y` `[B, C, H, W]` of the least-squares SENSE fit (module docstring); `y` measured
    multi-coil k-space `[B, C, H, W]`, `csm` `[B, C, H, W]`, `mask` real broadcastable to `[H, W]`."""
    x = conjugate_gradient(lambda v: sense_normal(v, csm, mask), sense_adjoint(y, csm, mask), iters)
    return sense_forward(x, csm, mask) - y * mask


def noise_sigma(y: torch.Tensor, csm: torch.Tensor, mask: torch.Tensor, iters: int = NOISE_ITERS) -> torch.Tensor:
    """Per-sample complex noise std `σ̂` `[B]` of measured k-space `y` (module docstring)."""
    residual = sense_residual(y, csm, mask, iters)
    measured = float(torch.broadcast_to(mask, y.shape)[0].gt(0).sum())
    unknowns = _support(csm).flatten(1).sum(dim=1)
    dof = (measured - unknowns).clamp_min(0)
    energy = residual.abs().square().flatten(1).sum(dim=1)
    return torch.where(dof > 0, torch.sqrt(energy / dof.clamp_min(1)), torch.zeros_like(energy))


def kspace_noise(shape, sigma: torch.Tensor, mask: torch.Tensor, normal: Callable) -> torch.Tensor:
    """Complex white noise `[B, C, H, W]` of variance `σ²` per measured sample (`sigma` `[B]`; zero where `mask` is
    0), from `normal(shape)`, a source of standard normal real tensors (e.g. `sampling.SampleNoise`)."""
    scale = append_dims(sigma, len(shape)) / 2 ** 0.5
    return torch.complex(normal(shape), normal(shape)) * scale * mask


def replica_variance(response: Callable[[torch.Tensor], torch.Tensor], shape, sigma: torch.Tensor,
                     mask: torch.Tensor, replicas: int, normal: Callable) -> torch.Tensor:
    """Per-pixel variance `[B, 1, H, W]` of a reconstruction's magnitude due to white k-space noise of std `sigma`
    `[B]` on the measured samples of k-space `shape` `[B, C, H, W]`, propagated by `response` (noise k-space →
    complex image `[B, 1, H, W]`), from `replicas` pseudo-replicas (module docstring)."""
    total = None
    for _ in range(replicas):
        power = response(kspace_noise(shape, sigma, mask, normal)).abs().square() / 2
        total = power if total is None else total + power
    return total / replicas
