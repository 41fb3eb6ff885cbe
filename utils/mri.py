"""MRI operators on native complex tensors.

Conventions (docs/ARCHITECTURE.md, "The mathematics"): images are complex `[B, 1, H, W]`; the network sees real
`[B, 2, H, W]` (real, imaginary). k-space is centred: the DC sample sits at index `(H // 2, W // 2)`. All transforms are
orthonormal and act on the last two dimensions; device and dtype follow the input.
"""
from __future__ import annotations

from typing import Callable

import torch

from utils.common import append_dims

_DIMS = (-2, -1)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two dimensions: image → k-space."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_DIMS), norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D inverse FFT over the last two dimensions: k-space → image."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=_DIMS), norm="ortho"), dim=_DIMS)


def c2r(x: torch.Tensor) -> torch.Tensor:
    """Complex `[B, C, H, W]` → real `[B, 2C, H, W]`: real parts, then imaginary parts, along dim 1."""
    return torch.cat((x.real, x.imag), dim=1)


def r2c(x: torch.Tensor) -> torch.Tensor:
    """Real `[B, 2C, H, W]` → complex `[B, C, H, W]`; the inverse of `c2r`."""
    if x.shape[1] % 2:
        raise ValueError(f"r2c needs an even number of channels in dim 1, got shape {tuple(x.shape)}")
    real, imag = x.chunk(2, dim=1)
    return torch.complex(real, imag)


def sense_forward(x: torch.Tensor, csm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multi-coil forward operator `A x = M ⊙ F(S ⊙ x)`.

    Args:
        x: complex image `[B, 1, H, W]`.
        csm: complex coil sensitivities `[B, C, H, W]`.
        mask: real sampling mask broadcastable to `[H, W]` (1 = sampled).

    Returns:
        complex masked multi-coil k-space `[B, C, H, W]`.
    """
    return mask * fft2c(csm * x)


def sense_adjoint(y: torch.Tensor, csm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Adjoint `Aᴴ y = Σ_c conj(S_c) ⊙ F⁻¹(M ⊙ y_c)`: complex k-space `[B, C, H, W]` → image `[B, 1, H, W]`."""
    return torch.sum(csm.conj() * ifft2c(mask * y), dim=1, keepdim=True)


def uncentre_mask(mask: torch.Tensor) -> torch.Tensor:
    """`ifftshift` of a centred k-space mask over its last two (or only) dimensions: the mask in FFT order."""
    if not isinstance(mask, torch.Tensor) or mask.numel() == 1:
        return mask
    return torch.fft.ifftshift(mask, dim=_DIMS if mask.ndim >= 2 else (-1,))


def sense_normal(x: torch.Tensor, csm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normal operator `AᴴA x = Σ_c conj(S_c) ⊙ F⁻¹(M ⊙ F(S_c ⊙ x))`: complex `[B, 1, H, W]` → `[B, 1, H, W]`.

    Computed without centring shifts: `F⁻¹ M F` is a circular convolution, which commutes with the circular shifts
    of the centred transforms, so only the (small) mask is shifted. Equal to `sense_adjoint(sense_forward(...))`.
    """
    k = torch.fft.fft2(csm * x, norm="ortho")
    return torch.sum(csm.conj() * torch.fft.ifft2(uncentre_mask(mask) * k, norm="ortho"), dim=1, keepdim=True)


def kspace_filter(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`F⁻¹(mask ⊙ F x)` on a real 2-channel image `[B, 2, H, W]`, returned in the same layout.

    With `mask = 1 − M_lf` this is the high-pass projector `M̂` of HFS-SDE (an orthogonal projector). Like
    `sense_normal`, it needs no centring shifts of the image.
    """
    k = torch.fft.fft2(r2c(x), norm="ortho")
    return c2r(torch.fft.ifft2(uncentre_mask(mask) * k, norm="ortho"))


def rss(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Root-sum-of-squares combination of complex coil images along `dim` (kept as a singleton)."""
    return torch.sqrt(torch.sum(torch.abs(x) ** 2, dim=dim, keepdim=True))


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the last two dimensions of `x` to `size`, starting at `(n - size) // 2` (the fastMRI convention)."""
    h, w = x.shape[-2:]
    ch, cw = size
    if ch > h or cw > w:
        raise ValueError(f"cannot crop an image of size {(h, w)} to {size}: the crop is larger than the image")
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw]


def crop_kspace(kspace: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-crop k-space `[..., H, W]` in the image domain, `F(crop(F⁻¹ k))` (how fastMRI's oversampled readout
    is brought to the reconstruction size); `size` must not exceed `(H, W)`."""
    if tuple(kspace.shape[-2:]) == tuple(size):
        return kspace
    return fft2c(center_crop(ifft2c(kspace), size))


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real part of the per-sample inner product `Re⟨a, b⟩ = Re Σ conj(a) b` over all but dim 0: `[B]`."""
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1)).real


def safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """`num / den` where `den > 0`, else 0 (a converged sample takes no further step)."""
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, torch.ones_like(den)), torch.zeros_like(num))


def conjugate_gradient(normal_op: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor,
                       num_iters: int) -> torch.Tensor:
    """Solve `N x = rhs` for every sample of a batch by `num_iters` conjugate-gradient iterations from `x = 0`.

    Args:
        normal_op: Hermitian positive semi-definite operator `N` acting on each sample (dim 0) independently,
            e.g. `x ↦ AᴴA x`.
        rhs: right-hand side `[B, ...]` (real or complex).
        num_iters: number of iterations (≥ 0).

    Returns:
        the iterate `x_k`, shaped like `rhs`. Step sizes α and β are computed per sample, so a batch gives
        the same iterates as separate runs; a sample whose residual is exactly zero stops moving.
    """
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = batch_dot(r, r)
    for _ in range(num_iters):
        normal_p = normal_op(p)
        alpha = append_dims(safe_div(rr, batch_dot(p, normal_p)), rhs.ndim)
        x = x + alpha * p
        r = r - alpha * normal_p
        rr_next = batch_dot(r, r)
        p = r + append_dims(safe_div(rr_next, rr), rhs.ndim) * p
        rr = rr_next
    return x
