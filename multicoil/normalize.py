"""The per-slice normalisations of multi-coil k-space (`data.normalize_type`)."""
from __future__ import annotations

import torch

from utils.mri import ifft2c, sense_adjoint, sense_forward

NORMALIZE_TYPES = ("std", "img_std", "minmax")


def _std(x: torch.Tensor) -> torch.Tensor:
    """Population std of a complex tensor over all elements: `sqrt(mean|x − mean x|²)` (numpy's `np.std`),
    computed in one pass as `sqrt(‖x‖²/n − |mean x|²)`."""
    variance = torch.linalg.vector_norm(x) ** 2 / x.numel() - torch.abs(x.mean()) ** 2
    return torch.sqrt(torch.clamp(variance, min=0))


def _rescale01(x: torch.Tensor) -> torch.Tensor:
    """Map a real tensor linearly onto [0, 1] (`(x − min) / (max − min)`); a constant tensor maps to 0."""
    low = x.min()
    span = x.max() - low
    return (x - low) / span if span > 0 else torch.zeros_like(x)


def normalize_kspace(kspace: torch.Tensor, maps: torch.Tensor, normalize_type: str, coeff: float) -> torch.Tensor:
    """Normalise one slice of multi-coil k-space as the published code does (`normalize_type`: std, img_std or minmax).

    Args:
        kspace: complex centred k-space `[C, H, W]`.
        maps: complex coil sensitivities `[C, H, W]` (used by `minmax` only).
        normalize_type: `std`: `k / (coeff · std(k))`, std over all coils and samples of the complex array;
            `img_std`: `k / std(F⁻¹ k)`, the std of the coil images (no coefficient, as published);
            `minmax`: the map-combined image `x = Σ conj(S)·F⁻¹k` becomes `coeff · m · exp(i·p)` with `m` its
            magnitude and `p` its phase angle (radians) each mapped linearly onto [0, 1], then `k = F(S·x)`.
        coeff: `data.normalize_coeff`.

    Returns:
        complex k-space `[C, H, W]`. An all-zero slice stays zero.
    """
    if normalize_type == "std":
        scale = coeff * _std(kspace)
        return kspace / scale if scale > 0 else kspace
    if normalize_type == "img_std":
        scale = _std(ifft2c(kspace))
        return kspace / scale if scale > 0 else kspace
    if normalize_type == "minmax":
        ones = torch.ones((), dtype=kspace.real.dtype)
        image = sense_adjoint(kspace[None], maps[None], ones)
        image = coeff * _rescale01(image.abs()) * torch.exp(1j * _rescale01(image.angle()))
        return sense_forward(image, maps[None], ones)[0]
    raise ValueError(f"unknown data.normalize_type {normalize_type!r}; choose one of {list(NORMALIZE_TYPES)}")
