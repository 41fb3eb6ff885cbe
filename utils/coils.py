"""Simulated multi-coil acquisition: birdcage coil sensitivities, coil k-space, complex noise.

Sensitivities follow the convention of ESPIRiT maps (sigpy's, and ours for BART): `Σ_c |S_c|² = 1` at every pixel
and coil 0 real and non-negative. Any map set can be brought to it with `align_phase` and the image then carries
the remaining phase, so `Σ_c conj(S_c) F⁻¹ k_c` returns the simulated image exactly.
"""
from __future__ import annotations

import numpy as np
import sigpy.mri
import torch

from utils.mri import fft2c


def align_phase(maps: np.ndarray) -> np.ndarray:
    """Rotate the phase of every pixel so that coil 0 is real and non-negative: `S ← S · conj(S₀)/|S₀|`.

    Args:
        maps: complex sensitivities `[..., C, H, W]`.

    Returns:
        complex64 maps of the same shape (pixels where `S₀ = 0` are left as they are).
    """
    first = maps[..., :1, :, :]
    magnitude = np.abs(first)
    rotation = np.where(magnitude > 0, np.conj(first) / np.where(magnitude > 0, magnitude, 1), 1)
    return (maps * rotation).astype(np.complex64)


def birdcage_sensitivities(num_coils: int, shape: tuple[int, int], radius: float = 1.5) -> np.ndarray:
    """Birdcage coil sensitivities (`sigpy.mri.birdcage_maps`), complex64 `[C, H, W]`, in the convention above.

    Args:
        num_coils: coils on the ring.
        shape: `(H, W)`.
        radius: ring radius relative to half the field of view (larger: flatter sensitivities).
    """
    return align_phase(sigpy.mri.birdcage_maps((num_coils,) + tuple(shape), r=radius))


def coil_kspace(image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Fully sampled centred multi-coil k-space `F(S ⊙ x)`.

    Args:
        image: complex images `[S, H, W]`.
        maps: complex sensitivities `[C, H, W]` (shared by all slices) or `[S, C, H, W]`.

    Returns:
        complex64 k-space `[S, C, H, W]`.
    """
    coil_images = torch.from_numpy(np.asarray(maps, np.complex64)) * torch.from_numpy(
        np.asarray(image, np.complex64))[:, None]
    return fft2c(coil_images).numpy()


def add_noise(kspace: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add circular complex Gaussian noise at a signal-to-noise ratio (dB) of mean power:
    noise variance per complex sample = `mean|k|² / 10^(snr_db/10)`, split equally between real and imaginary."""
    sigma = np.sqrt(np.mean(np.abs(kspace) ** 2) / 10 ** (snr_db / 10) / 2)
    noise = rng.standard_normal(kspace.shape + (2,), dtype=np.float32) * np.float32(sigma)
    return (kspace + noise.view(np.complex64)[..., 0]).astype(np.complex64)
