"""Classical reconstructions in the same harness as the diffusion samplers (`sampling.method`).

Every method has the signature `fn(y, csm, mask, settings) -> x`, `settings` its frozen settings object (fields named
like the `sampling.*` keys they come from; `BASELINES` registers each method with its label and settings class):
    y     complex masked multi-coil k-space `[B, C, H, W]` (complex64), centred as in `utils.mri`;
    csm   complex coil sensitivities `[B, C, H, W]`;
    mask  real sampling mask broadcastable to `[B, 1, H, W]` (1 = sampled), e.g. `[1, 1, H, W]`;
    x     complex image `[B, 1, H, W]` on the device and in the dtype of `y`.
The forward model is `A x = M ⊙ F(S ⊙ x)` of `utils.mri.sense_forward`.

    zero_filled  `Aᴴ y`, the coil-combined zero-filled image.
    sense        CG-SENSE: `cg_iters` conjugate-gradient iterations on `AᴴA x = Aᴴ y` from `x = 0`
                 (early stopping is the only regularisation), batched, in torch on the tensors' device.
    l1wavelet    `argmin_x ½‖A x − y‖² + λ‖Ψ x‖₁` (Daubechies-4 wavelets Ψ, λ = `l1_lambda`,
                 `l1_iters` accelerated proximal-gradient iterations) by sigpy's `L1WaveletRecon`, slice by
                 slice on the CPU; deterministic. λ is in the units of the data, so it depends on the k-space
                 normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from sigpy.mri.app import L1WaveletRecon

from utils.common import Registry, finite_at_least
from utils.mri import conjugate_gradient, sense_adjoint, sense_normal

Baseline = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]
BASELINES: Registry[Baseline] = Registry("baseline method")


@dataclass(frozen=True)
class ZeroFilledSettings:
    """The zero-filled image has no settings."""


@dataclass(frozen=True)
class SenseSettings:
    """CG-SENSE: `cg_iters` conjugate-gradient iterations (at least 1)."""

    cg_iters: int

    def __post_init__(self):
        if self.cg_iters < 1:
            raise ValueError(f"sampling.cg_iters must be a positive number of CG iterations, got {self.cg_iters}")


@dataclass(frozen=True)
class L1WaveletSettings:
    """ℓ1-wavelet: the weight `l1_lambda` (≥ 0) and `l1_iters` proximal-gradient iterations (≥ 1)."""

    l1_lambda: float
    l1_iters: int

    def __post_init__(self):
        if not finite_at_least(self.l1_lambda, 0) or self.l1_iters < 1:
            raise ValueError(f"sampling.l1_lambda must be a finite number ≥ 0 and sampling.l1_iters ≥ 1, got {self.l1_lambda} and "
                             f"{self.l1_iters}")


def _check_inputs(y: torch.Tensor, csm: torch.Tensor, mask: torch.Tensor) -> None:
    """Raise a ValueError naming the offending tensor unless the shapes fit `[B, C, H, W]` and the mask."""
    if y.ndim != 4 or y.shape != csm.shape or not (y.is_complex() and csm.is_complex()):
        raise ValueError(f"y and csm must both be complex [B, C, H, W] tensors of one shape; got y "
                         f"{tuple(y.shape)} {y.dtype} and csm {tuple(csm.shape)} {csm.dtype}")
    batch, _, height, width = y.shape
    target = (batch, 1, height, width)
    try:
        fits = torch.broadcast_shapes(mask.shape, target) == target
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"sampling mask of shape {tuple(mask.shape)} does not match the k-space size "
                         f"{(height, width)}; build the mask for this matrix size (shape [H, W] or [1, 1, H, W])")


@BASELINES.register("zero_filled", label="zero-filled", kind="baseline", settings=ZeroFilledSettings)
@torch.no_grad()
def zero_filled(y: torch.Tensor, csm: torch.Tensor, mask: torch.Tensor,
                settings: ZeroFilledSettings) -> torch.Tensor:
    """Zero-filled coil-combined image `Aᴴ y`: complex `[B, 1, H, W]`."""
    _check_inputs(y, csm, mask)
    return sense_adjoint(y, csm, mask)


@BASELINES.register("sense", label="CG-SENSE", kind="baseline", settings=SenseSettings)
@torch.no_grad()
def sense(y: torch.Tensor, csm: torch.Tensor, mask: torch.Tensor, settings: SenseSettings) -> torch.Tensor:
    """CG-SENSE: `settings.cg_iters` CG iterations on `AᴴA x = Aᴴ y`; complex `[B, 1, H, W]`."""
    _check_inputs(y, csm, mask)
    num_iters = settings.cg_iters
    mask = mask.to(y.device)

    def normal_op(x: torch.Tensor) -> torch.Tensor:
        return sense_normal(x, csm, mask)

    return conjugate_gradient(normal_op, sense_adjoint(y, csm, mask), num_iters)


@BASELINES.register("l1wavelet", label="ℓ1-wavelet", kind="baseline", settings=L1WaveletSettings)
@torch.no_grad()
def l1wavelet(y: torch.Tensor, csm: torch.Tensor, mask: torch.Tensor, settings: L1WaveletSettings) -> torch.Tensor:
    """ℓ1-wavelet compressed sensing (sigpy `L1WaveletRecon`), one slice at a time on the CPU.

    Uses `settings.l1_lambda` (λ) and `settings.l1_iters` (iterations); returns complex `[B, 1, H, W]` on the
    device and in the dtype of `y`.
    """
    _check_inputs(y, csm, mask)
    lamda, num_iters = settings.l1_lambda, settings.l1_iters
    masks = torch.broadcast_to(mask, (y.shape[0], 1) + tuple(y.shape[-2:]))
    images = []
    for k, c, m in zip(y.cpu().numpy(), csm.cpu().numpy(), masks[:, 0].cpu().numpy()):
        # Step 1/L with L = max(M)·max_pixels Σ_c|S_c|² ≥ ‖AᴴA‖: deterministic, unlike sigpy's default power
        # iteration, which starts from numpy's global random state.
        lipschitz = float(np.max(m)) * float(np.max(np.sum(np.abs(c) ** 2, axis=0)))
        app = L1WaveletRecon(k, c, lamda, weights=m.astype(np.float32), max_iter=num_iters,
                             alpha=1.0 / lipschitz if lipschitz > 0 else 1.0, show_pbar=False)
        images.append(torch.from_numpy(np.asarray(app.run())))
    return torch.stack(images)[:, None].to(device=y.device, dtype=y.dtype)
