"""Simulated multi-coil acquisition: coil sensitivities, coil k-space, complex noise, a fast map estimate.

Sensitivities follow the convention of ESPIRiT maps (sigpy's, and ours for BART): `Σ_c |S_c|² = 1` at every pixel
and coil 0 real and non-negative. Any map set can be brought to it with `align_phase` and the image then carries
the remaining phase, so `Σ_c conj(S_c) F⁻¹ k_c` returns the simulated image exactly.

Coil layouts (`coil_maps`), on a field of view that may be larger than the reconstructed image (an oversampled
readout: the maps are made over the whole acquired matrix and the image is the centre of it):

- `birdcage`: sigpy's birdcage model, `C` coils on a ring of relative radius `r` (1 = the edge of the field of
  view along each axis), `S_c ∝ e^{iφ_c}/ρ_c`;
- `loops`: `C` small surface loops on an ellipse of relative radius `r`, each facing the centre; the magnitude is
  the on-axis field of a circular loop of radius `a`, `a²/(a² + ρ_c²)^{3/2}` (ρ_c the distance to the loop), the
  phase the azimuth seen from the loop. Loops see a shorter depth than birdcage rungs: a different conditioning.

Noise (`add_noise`): circular complex Gaussian, white or correlated between coils (covariance
`Ψ_cd = ρ^{d(c, d)}` with `d` the distance around the ring), at a level given as an SNR in dB of mean power, or as
a fraction of the brightest coil-image magnitude (`E|n|² = (fraction · max_c,x |S_c x|)²`, fastMRI-like scans).
"""
from __future__ import annotations

import numpy as np
import sigpy.mri
import torch

from utils.mri import fft2c, ifft2c

LAYOUTS = ("birdcage", "loops")


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


def loop_sensitivities(num_coils: int, shape: tuple[int, int], radius: float = 1.1,
                       loop_size: float = 0.35) -> np.ndarray:
    """Surface loops on an ellipse (module docstring), complex64 `[C, H, W]` in the convention above.

    Args:
        num_coils: loops, evenly spaced in angle.
        shape: `(H, W)`.
        radius: ellipse radius relative to half the field of view along each axis.
        loop_size: loop radius `a`, relative to half the field of view.
    """
    h, w = shape
    y, x = np.meshgrid((np.arange(h) - h / 2) / (h / 2), (np.arange(w) - w / 2) / (w / 2), indexing="ij")
    angle = 2 * np.pi * np.arange(num_coils) / num_coils
    dx = x[None] - radius * np.cos(angle)[:, None, None]
    dy = y[None] - radius * np.sin(angle)[:, None, None]
    rho2 = dx ** 2 + dy ** 2
    out = loop_size ** 2 / (loop_size ** 2 + rho2) ** 1.5 * np.exp(1j * np.arctan2(dy, dx))
    out /= np.sqrt(np.sum(np.abs(out) ** 2, axis=0))
    return align_phase(out)


def coil_maps(layout: str, num_coils: int, shape: tuple[int, int], radius: float,
              fov_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Sensitivities `[C, H, W]` of a coil `layout` placed over the field of view `fov_shape` (default `shape`),
    centre-cropped to `shape` (an oversampled readout: coils around the whole acquired matrix)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown coil layout {layout!r}; choose one of {list(LAYOUTS)}")
    fov = tuple(shape) if fov_shape is None else tuple(fov_shape)
    if fov[0] < shape[0] or fov[1] < shape[1]:
        raise ValueError(f"the field of view {fov} must hold the image {tuple(shape)}")
    maps = (birdcage_sensitivities if layout == "birdcage" else loop_sensitivities)(num_coils, fov, radius)
    top, left = (fov[0] - shape[0]) // 2, (fov[1] - shape[1]) // 2
    return np.ascontiguousarray(maps[:, top:top + shape[0], left:left + shape[1]])


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


def noise_covariance(num_coils: int, correlation: float) -> np.ndarray:
    """Coil noise covariance `Ψ_cd = correlation^{d(c, d)}` (`d` the distance around the ring), `[C, C]` float64;
    positive definite for `0 ≤ correlation < 1`."""
    if not 0 <= correlation < 1:
        raise ValueError(f"the coil noise correlation must be in [0, 1), got {correlation}")
    c = np.arange(num_coils)
    ring = np.abs(c[:, None] - c[None])
    return correlation ** np.minimum(ring, num_coils - ring)


def noise_sigma(kspace: np.ndarray, snr_db: float | None = None, peak_fraction: float | None = None) -> float:
    """Complex noise std (`E|n|² = σ²`) of a noise level given in one of the two conventions (module docstring).

    `kspace` is the noiseless `[..., C, H, W]`: its mean power sets the SNR convention, its brightest coil image
    the peak-fraction convention.
    """
    if (snr_db is None) == (peak_fraction is None):
        raise ValueError("give the noise level as exactly one of snr_db and peak_fraction")
    if snr_db is not None:
        return float(np.sqrt(np.mean(np.abs(kspace) ** 2) / 10 ** (snr_db / 10)))
    if peak_fraction < 0:
        raise ValueError(f"the noise level peak_fraction must be >= 0, got {peak_fraction}")
    peak = float(ifft2c(torch.from_numpy(np.asarray(kspace, np.complex64))).abs().max())
    return peak_fraction * peak


def add_noise(kspace: np.ndarray, snr_db: float | None, rng: np.random.Generator, *,
              peak_fraction: float | None = None, correlation: float = 0.0) -> np.ndarray:
    """Add circular complex Gaussian noise to k-space `[..., C, H, W]` at `snr_db` (mean-power convention:
    `E|n|² = mean|k|² / 10^(snr_db/10)`) or at `peak_fraction` of the brightest coil image; with `correlation`, the
    coil noise has the covariance `σ² Ψ` of `noise_covariance`. Returns complex64."""
    sigma = noise_sigma(kspace, snr_db, peak_fraction)
    white = rng.standard_normal(kspace.shape + (2,), dtype=np.float32).view(np.complex64)[..., 0]
    white *= np.float32(sigma / np.sqrt(2))
    if correlation:
        mixing = np.linalg.cholesky(noise_covariance(kspace.shape[-3], correlation)).astype(np.complex64)
        white = np.einsum("cd,...dhw->...chw", mixing, white)
    return (kspace + white).astype(np.complex64)


def ratio_maps(kspace: np.ndarray, acs: int, threshold: float = 0.05) -> np.ndarray:
    """A fast sensitivity estimate from the `acs` central columns: low-resolution coil images divided by their
    root-sum-of-squares, zero where that is below `threshold` × its maximum; in the convention above.

    Cheaper than ESPIRiT by two orders of magnitude and, like it, wrong near edges and outside the object: the
    training augmentation uses it to show the network images combined with estimated maps.
    `kspace` complex `[C, H, W]`; returns complex64 `[C, H, W]`.
    """
    c, h, w = kspace.shape
    window = np.zeros((h, w), np.float32)
    rows, cols = np.hanning(min(acs, h) + 2)[1:-1], np.hanning(acs + 2)[1:-1]
    top, left = (h - len(rows)) // 2, (w - acs) // 2
    window[top:top + len(rows), left:left + acs] = np.outer(rows, cols)
    low = ifft2c(torch.from_numpy(np.asarray(kspace, np.complex64) * window)).numpy()
    rss = np.sqrt(np.sum(np.abs(low) ** 2, axis=0))
    keep = rss > threshold * rss.max()
    return align_phase(np.where(keep, low / np.where(keep, rss, 1), 0))
