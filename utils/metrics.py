"""Image-quality metrics for MRI reconstructions, in two conventions.

All metrics act on magnitude images (float64 numpy internally); `to_magnitude` turns complex or real, numpy or
torch inputs into one. Each metric is a small pure function with an explicit `data_range` argument where the
metric has one; `None` selects the convention's own rule, stated in the docstring.

fastMRI convention (facebookresearch/fastMRI `fastmri/evaluate.py`), keys `nmse`, `psnr`, `ssim`:
    nmse = ‖gt − pred‖² / ‖gt‖²
    psnr = 10 log10(R² / mean((gt − pred)²)),  R = gt.max()          (skimage `peak_signal_noise_ratio`)
    ssim = skimage `structural_similarity` with data_range R = gt.max(): 7×7 uniform window, sample covariance,
           K1 = 0.01, K2 = 0.03, mean over the windows that fit inside the image.
    Per volume (`evaluate_volume`): NMSE and PSNR over the whole stack with R = volume max; SSIM is the mean of the
    per-slice SSIMs, each with R = volume max.

Published HFS-SDE convention (Aboriginer/HFS-SDE `utils/calc.py::Evaluation_metrics`, with torchmetrics 0.11.0
defaults as pinned in its `environment.yml`), keys `nmse_published`, `psnr_published`, `ssim_published`:
    support: on the phantom set the published code multiplies the *reconstruction only* by the object's support
             mask (`mask/photom_mask.mat`) before any metric; the ground truth is left as it is.
    nmse_published = ‖p/max(p) − g/max(g)‖² / ‖g/max(g)‖²   (each image divided by its own maximum)
    psnr_published = 10 log10(R² / mean((g − p)²)),  R = max(g.max(), 0) − min(g.min(), 0)
                     (`PeakSignalNoiseRatio()`: its running target min/max start at 0, so R = g.max() for magnitudes)
    ssim_published = `StructuralSimilarityIndexMeasure()`: 11×11 Gaussian window (σ = 1.5, 1-D taps
                     exp(−d²/2σ²) at d = −5…5, normalised), population covariance, K1 = 0.01, K2 = 0.03,
                     R = max(p.max() − p.min(), g.max() − g.min()); the SSIM map is computed on the reflect-padded
                     image and cropped by 5 pixels on every side, i.e. the mean over the windows that fit inside
                     the image.
    The published code computes these in float32 on un-normalised magnitudes; here they are float64, so the
    numbers agree to float32 precision. Later torchmetrics releases changed SSIM (variances clamped at 0; the
    current main branch averages the whole reflect-padded map without the crop), so they do not reproduce it.

How they differ: NMSE is scale-sensitive in the fastMRI convention but compares max-normalised images in the
published one (a reconstruction off by a global scale factor is not penalised there); PSNR coincides per slice
for magnitude images (apart from the support mask); SSIM differs in window (7×7 uniform vs 11×11 Gaussian),
covariance estimator (sample vs population) and data range (gt max vs the larger of the two images' ranges), so the
two SSIMs are not interchangeable (on a 64×64 Shepp-Logan test they differed by up to 0.015).
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

ArrayLike = Union[np.ndarray, torch.Tensor]

_K1, _K2 = 0.01, 0.03
_GAUSS_SIGMA = 1.5
_GAUSS_SIZE = 2 * int(3.5 * _GAUSS_SIGMA + 0.5) + 1  # 11, the torchmetrics rule for the Gaussian window size


def _numpy(x: ArrayLike) -> np.ndarray:
    """`x` as a numpy array (torch tensors are detached and copied to the CPU)."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def to_magnitude(x: ArrayLike) -> np.ndarray:
    """Magnitude `|x|` as a float64 numpy array of the same shape (numpy or torch, real or complex input)."""
    return np.abs(_numpy(x)).astype(np.float64)


def _pair(gt: ArrayLike, pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 arrays of equal shape."""
    gt, pred = _numpy(gt), _numpy(pred)
    if np.iscomplexobj(gt) or np.iscomplexobj(pred):
        raise ValueError("metric functions take magnitude images; pass to_magnitude(x) or call evaluate(), "
                         "which converts complex images itself")
    gt, pred = gt.astype(np.float64), pred.astype(np.float64)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth has shape {gt.shape} but the reconstruction has shape {pred.shape}; "
                         "crop or resize the reconstruction to the ground truth's size")
    return gt, pred


def _slice(x: np.ndarray, name: str) -> np.ndarray:
    """`x` as a 2-D `[H, W]` image, dropping leading singleton dimensions (e.g. of `[1, 1, H, W]`)."""
    if x.ndim < 2 or x.size != x.shape[-2] * x.shape[-1]:
        raise ValueError(f"{name} must be one 2-D image [H, W] (leading dimensions of size 1 allowed), "
                         f"got shape {x.shape}; evaluate slices one at a time or use evaluate_volume")
    return x.reshape(x.shape[-2:])


def _apply_support(pred: np.ndarray, support: Optional[ArrayLike]) -> np.ndarray:
    """The reconstruction multiplied by the support mask, as the published code does (ground truth untouched)."""
    if support is None:
        return pred
    support = to_magnitude(support)
    try:
        fits = np.broadcast_shapes(support.shape, pred.shape) == pred.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"support mask of shape {support.shape} does not broadcast to the image shape {pred.shape}; "
                         "pass a mask of the image's size [H, W]")
    return pred * support


# fastMRI convention.


def nmse(gt: ArrayLike, pred: ArrayLike) -> float:
    """Normalised MSE `‖gt − pred‖² / ‖gt‖²` of two magnitude arrays of any equal shape (unitless)."""
    gt, pred = _pair(gt, pred)
    return float(np.sum((gt - pred) ** 2) / np.sum(gt ** 2))


def psnr(gt: ArrayLike, pred: ArrayLike, data_range: Optional[float] = None) -> float:
    """PSNR in dB of two magnitude arrays of any equal shape; `data_range=None` uses `gt.max()` (fastMRI).

    Identical images give `inf`.
    """
    gt, pred = _pair(gt, pred)
    data_range = gt.max() if data_range is None else data_range
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(gt, pred, data_range=data_range))


def ssim(gt: ArrayLike, pred: ArrayLike, data_range: Optional[float] = None) -> float:
    """SSIM of two magnitude slices `[H, W]` (H, W ≥ 7) with skimage defaults; `data_range=None` uses `gt.max()`."""
    gt, pred = _pair(gt, pred)
    gt, pred = _slice(gt, "ground truth"), _slice(pred, "reconstruction")
    data_range = gt.max() if data_range is None else data_range
    return float(structural_similarity(gt, pred, data_range=data_range))


def ssim_volume(gt: ArrayLike, pred: ArrayLike, data_range: Optional[float] = None) -> float:
    """Mean per-slice SSIM of magnitude volumes `[S, H, W]`; `data_range=None` uses the volume's `gt.max()`."""
    gt, pred = _pair(gt, pred)
    if gt.ndim != 3:
        raise ValueError(f"ssim_volume needs volumes of shape [slices, H, W], got {gt.shape}; use ssim for one slice")
    data_range = gt.max() if data_range is None else data_range
    return float(np.mean([ssim(g, p, data_range) for g, p in zip(gt, pred)]))


# Published HFS-SDE convention.


def nmse_published(gt: ArrayLike, pred: ArrayLike, support: Optional[ArrayLike] = None) -> float:
    """NMSE after dividing each magnitude image by its own maximum; `support` (0/1, broadcastable) masks `pred`.

    Returns NaN when the (masked) reconstruction is all zero, where max-normalisation is undefined.
    """
    gt, pred = _pair(gt, pred)
    pred = _apply_support(pred, support)
    if pred.max() == 0:
        return float("nan")
    gt, pred = gt / gt.max(), pred / pred.max()
    return float(np.sum((pred - gt) ** 2) / np.sum(gt ** 2))


def psnr_published(gt: ArrayLike, pred: ArrayLike, support: Optional[ArrayLike] = None,
                   data_range: Optional[float] = None) -> float:
    """PSNR in dB as torchmetrics `PeakSignalNoiseRatio()`; `data_range=None`: `max(gt.max(),0) − min(gt.min(),0)`.

    `support` (0/1, broadcastable to the image) masks the reconstruction only, as published. Identical images
    give `inf`.
    """
    gt, pred = _pair(gt, pred)
    pred = _apply_support(pred, support)
    if data_range is None:
        data_range = max(gt.max(), 0.0) - min(gt.min(), 0.0)
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(data_range ** 2 / np.mean((pred - gt) ** 2)))


def _gaussian_filter_valid(x: np.ndarray) -> np.ndarray:
    """Separable 11×11 Gaussian (σ = 1.5) weighted means of `x [H, W]` at every window inside the image."""
    d = np.arange((1 - _GAUSS_SIZE) / 2, (1 + _GAUSS_SIZE) / 2)
    w = np.exp(-((d / _GAUSS_SIGMA) ** 2) / 2)
    w /= w.sum()
    windows = np.lib.stride_tricks.sliding_window_view
    x = windows(x, _GAUSS_SIZE, axis=0) @ w  # [H − 10, W]
    return windows(x, _GAUSS_SIZE, axis=1) @ w  # [H − 10, W − 10]


def ssim_published(gt: ArrayLike, pred: ArrayLike, support: Optional[ArrayLike] = None,
                   data_range: Optional[float] = None) -> float:
    """SSIM as torchmetrics `StructuralSimilarityIndexMeasure()` on magnitude slices `[H, W]` (H, W ≥ 11).

    `data_range=None` uses `max(ptp(pred), ptp(gt))`; `support` (0/1, broadcastable) masks the reconstruction only.
    """
    gt, pred = _pair(gt, pred)
    gt, pred = _slice(gt, "ground truth"), _slice(pred, "reconstruction")
    if min(gt.shape) < _GAUSS_SIZE:
        raise ValueError(f"ssim_published needs images of at least {_GAUSS_SIZE}×{_GAUSS_SIZE} pixels "
                         f"(the Gaussian window), got {gt.shape}")
    pred = _apply_support(pred, support)
    if data_range is None:
        data_range = max(np.ptp(pred), np.ptp(gt))
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    mu_p, mu_g = _gaussian_filter_valid(pred), _gaussian_filter_valid(gt)
    var_p = _gaussian_filter_valid(pred * pred) - mu_p ** 2
    var_g = _gaussian_filter_valid(gt * gt) - mu_g ** 2
    cov = _gaussian_filter_valid(pred * gt) - mu_p * mu_g
    ssim_map = ((2 * mu_p * mu_g + c1) * (2 * cov + c2)) / ((mu_p ** 2 + mu_g ** 2 + c1) * (var_p + var_g + c2))
    return float(ssim_map.mean())


FASTMRI_METRICS: dict[str, Callable[..., float]] = {"nmse": nmse, "psnr": psnr, "ssim": ssim}
PUBLISHED_METRICS: dict[str, Callable[..., float]] = {
    "nmse_published": nmse_published, "psnr_published": psnr_published, "ssim_published": ssim_published}
METRICS: dict[str, Callable[..., float]] = {**FASTMRI_METRICS, **PUBLISHED_METRICS}


def evaluate(gt: ArrayLike, pred: ArrayLike, support: Optional[ArrayLike] = None) -> dict[str, float]:
    """All metrics of one slice in both conventions.

    Args:
        gt: ground-truth image `[H, W]` (or `[1, 1, H, W]`), complex or magnitude, numpy or torch.
        pred: reconstruction of the same shape.
        support: optional 0/1 object mask broadcastable to `[H, W]`; applied to `pred` in the published
            convention only (the fastMRI convention never masks).

    Returns:
        `{"nmse", "psnr", "ssim", "nmse_published", "psnr_published", "ssim_published"}` as Python floats
        (PSNR in dB, the others unitless).
    """
    gt, pred = _pair(to_magnitude(gt), to_magnitude(pred))
    gt, pred = _slice(gt, "ground truth"), _slice(pred, "reconstruction")
    scores = {name: fn(gt, pred) for name, fn in FASTMRI_METRICS.items()}
    scores.update({name: fn(gt, pred, support=support) for name, fn in PUBLISHED_METRICS.items()})
    return scores


def evaluate_volume(gt: ArrayLike, pred: ArrayLike) -> dict[str, float]:
    """fastMRI per-volume metrics of volumes `[S, H, W]` (complex or magnitude): `{"nmse", "psnr", "ssim"}`.

    NMSE and PSNR are taken over the whole stack (PSNR with the volume's maximum); SSIM is the mean per-slice SSIM
    with the volume's maximum as data range, exactly as `fastmri/evaluate.py`.
    """
    gt, pred = _pair(to_magnitude(gt), to_magnitude(pred))
    return {"nmse": nmse(gt, pred), "psnr": psnr(gt, pred), "ssim": ssim_volume(gt, pred)}


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays; NaN when either is constant or has fewer than 2 values."""
    from scipy.stats import spearmanr  # noqa: PLC0415 - only posterior samples and error maps need it

    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def calibration(gt: ArrayLike, mean: ArrayLike, std: ArrayLike, region: ArrayLike) -> dict[str, float]:
    """How well a pixelwise posterior std predicts the error of the posterior mean, over `region` (0/1 `[H, W]`).

    `std_rank_corr`: Spearman rank correlation between `std` and `|error| = ||mean| − |gt||` (1: the std orders
    the pixels exactly as their errors do); `coverage_2std`: the fraction of pixels with `|error| ≤ 2·std` (about
    0.95 for a calibrated Gaussian posterior; lower means over-confident). Inputs are `[H, W]`, complex or magnitude.
    """
    gt, mean = _pair(to_magnitude(gt), to_magnitude(mean))
    inside = _numpy(region).astype(bool)
    error = np.abs(mean - gt)[inside]
    spread = _numpy(std).astype(np.float64)[inside]
    return {"std_rank_corr": _rank_correlation(spread, error), "coverage_2std": float(np.mean(error <= 2 * spread))}


# Error maps: coverage, conformal calibration and the predicted PSNR (runners/uncertainty.py).

COVERAGE_LEVELS = (0.5, 0.68, 0.9, 0.95)  # nominal two-sided coverages reported per slice (`coverage_50` ...)


def gaussian_z(level: float) -> float:
    """The half-width `z` of the two-sided Gaussian interval `±z·σ` that holds the fraction `level` in (0, 1)."""
    from scipy.stats import norm  # noqa: PLC0415

    return float(norm.ppf(0.5 + level / 2))


def coverage(error: np.ndarray, std: np.ndarray, levels=COVERAGE_LEVELS) -> list[float]:
    """Observed coverage of the intervals `±z(level)·std` (`gaussian_z`): for each level the fraction of the values
    with `|error| ≤ z·std`; `error` and `std` are arrays of one shape (e.g. the object's pixels)."""
    error, std = np.abs(np.asarray(error, dtype=np.float64)), np.asarray(std, dtype=np.float64)
    return [float(np.mean(error <= gaussian_z(level) * std)) for level in levels]


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile of calibration `scores` (n values): the ⌈(n + 1)·level⌉-th smallest, `inf` when
    that rank exceeds n. A new score exchangeable with them is at most this value with probability ≥ `level`."""
    scores = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    rank = int(np.ceil((scores.size + 1) * level))
    return float(scores[rank - 1]) if 1 <= rank <= scores.size else float("inf")


def predicted_psnr(peak: float, variance: ArrayLike) -> float:
    """PSNR in dB that an error of pixelwise `variance` `[H, W]` would give with the data range `peak`:
    `10 log10(peak² / mean(variance))` (the mean over the whole image, as the fastMRI PSNR's MSE)."""
    mse = float(np.mean(_numpy(variance).astype(np.float64)))
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(peak ** 2 / mse)) if mse > 0 else float("inf")


def error_calibration(gt: ArrayLike, recon: ArrayLike, error_std: ArrayLike, region: ArrayLike) -> dict[str, float]:
    """How well an error map `error_std` `[H, W]` (the predicted std of `|recon| − |gt|`) describes the error, over
    `region`: `coverage_50`, `coverage_68`, `coverage_90`, `coverage_95` (observed coverage of the nominal levels
    `COVERAGE_LEVELS`, `coverage`), `error_rank_corr` (Spearman rank correlation between the map and |error|) and
    `error_rank_ceiling` (`rank_ceiling`: what an exact map of the same values would reach)."""
    gt, recon = _pair(to_magnitude(gt), to_magnitude(recon))
    inside = _numpy(region).astype(bool)
    error = np.abs(recon - gt)[inside]
    spread = _numpy(error_std).astype(np.float64)[inside]
    covered = coverage(error, spread)
    row = {f"coverage_{round(100 * level)}": value for level, value in zip(COVERAGE_LEVELS, covered)}
    row["error_rank_corr"] = _rank_correlation(spread, error)
    row["error_rank_ceiling"] = rank_ceiling(spread)
    return row


def rank_ceiling(std: np.ndarray, draws: int = 8, seed: int = 0) -> float:
    """The rank correlation with |error| that the map `std` (1-D) would reach if it were exact, for Gaussian errors:
    the mean Spearman correlation between `std` and `|std·z|` over `draws` standard normal `z` (a fixed `seed`:
    repeatable). One error per pixel is one random draw, so even an exact map ranks the errors only as far as its
    values differ: a map that varies little over the object has a low ceiling, whatever its quality (errors with
    heavier tails than a Gaussian's can rank above it). NaN for a constant map."""
    std = np.asarray(std, dtype=np.float64)
    normal = np.random.default_rng(seed)
    values = [_rank_correlation(std, np.abs(std * normal.standard_normal(std.shape))) for _ in range(draws)]
    return float(np.mean(values))
