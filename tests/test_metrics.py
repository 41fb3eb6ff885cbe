"""Metrics against skimage / float64 numpy formulas, in the fastMRI and the published HFS-SDE conventions."""
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from utils import metrics

SHAPES = [(24, 24), (23, 30)]


def _pair(shape, seed=0):
    """A positive magnitude image and a noisy, slightly rescaled reconstruction of it."""
    rng = np.random.default_rng(seed)
    gt = np.abs(rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) + 0.5
    pred = np.abs(0.9 * gt + 0.2 * rng.standard_normal(shape))
    return gt, pred


def _fixed(h, w):
    """Deterministic smooth image + disc and a perturbed copy (no RNG), used for the recorded torchmetrics values."""
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    gt = 1.0 + np.sin(i / 3.0) * np.cos(j / 5.0) + (((i - h / 2) ** 2 + (j - w / 2) ** 2) < (h / 3) ** 2)
    pred = gt + 0.2 * np.sin(1.7 * i + 0.3 * j) - 0.1 * np.cos(0.9 * j)
    return gt, np.abs(pred)


def _ssim_gaussian_loop(gt, pred):
    """Independent SSIM: explicit loop over every 11×11 window inside the image, 2-D Gaussian weights (σ = 1.5)."""
    d = np.arange(11) - 5.0
    g = np.exp(-d ** 2 / (2 * 1.5 ** 2))
    w2 = np.outer(g, g) / np.outer(g, g).sum()
    rng_ = max(pred.max() - pred.min(), gt.max() - gt.min())
    c1, c2 = (0.01 * rng_) ** 2, (0.03 * rng_) ** 2
    values = []
    for i in range(gt.shape[0] - 10):
        for j in range(gt.shape[1] - 10):
            a, b = pred[i:i + 11, j:j + 11], gt[i:i + 11, j:j + 11]
            mu_a, mu_b = np.sum(w2 * a), np.sum(w2 * b)
            var_a, var_b = np.sum(w2 * (a - mu_a) ** 2), np.sum(w2 * (b - mu_b) ** 2)
            cov = np.sum(w2 * (a - mu_a) * (b - mu_b))
            numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
            values.append(numerator / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return np.mean(values)


# fastMRI convention.


@pytest.mark.parametrize("shape", SHAPES)
def test_fastmri_metrics_equal_numpy_and_skimage(shape):
    gt, pred = _pair(shape)
    assert metrics.nmse(gt, pred) == pytest.approx(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2, rel=1e-12)
    mse = np.mean((gt - pred) ** 2)
    assert metrics.psnr(gt, pred) == pytest.approx(10 * np.log10(gt.max() ** 2 / mse), rel=1e-12)
    assert metrics.psnr(gt, pred) == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=gt.max()), rel=1e-12)
    assert metrics.ssim(gt, pred) == pytest.approx(structural_similarity(gt, pred, data_range=gt.max()), rel=1e-12)


def test_explicit_data_range_is_used():
    gt, pred = _pair((20, 21))
    assert metrics.psnr(gt, pred, data_range=10.0) == pytest.approx(10 * np.log10(100 / np.mean((gt - pred) ** 2)))
    assert metrics.ssim(gt, pred, data_range=10.0) == pytest.approx(structural_similarity(gt, pred, data_range=10.0))
    assert metrics.ssim_published(gt, pred, data_range=10.0) != pytest.approx(metrics.ssim_published(gt, pred))


def test_volume_metrics_follow_fastmri_evaluate():
    rng = np.random.default_rng(3)
    gt = np.abs(rng.standard_normal((3, 16, 17))) * np.array([1.0, 2.0, 0.5])[:, None, None]
    pred = np.abs(gt + 0.1 * rng.standard_normal(gt.shape))
    vmax = gt.max()
    expected_ssim = np.mean([structural_similarity(g, p, data_range=vmax) for g, p in zip(gt, pred)])
    scores = metrics.evaluate_volume(gt, pred)
    assert scores["ssim"] == pytest.approx(expected_ssim, rel=1e-12)
    assert scores["psnr"] == pytest.approx(10 * np.log10(vmax ** 2 / np.mean((gt - pred) ** 2)), rel=1e-12)
    assert scores["nmse"] == pytest.approx(np.sum((gt - pred) ** 2) / np.sum(gt ** 2), rel=1e-12)
    assert metrics.ssim_volume(gt, pred) == pytest.approx(expected_ssim, rel=1e-12)


# Published HFS-SDE convention.


@pytest.mark.parametrize("shape", [(17, 14), (20, 20)])
def test_ssim_published_equals_gaussian_window_loop(shape):
    gt, pred = _pair(shape, seed=1)
    assert metrics.ssim_published(gt, pred) == pytest.approx(_ssim_gaussian_loop(gt, pred), rel=1e-10)


@pytest.mark.parametrize("shape, ssim_tm, psnr_tm", [((32, 32), 0.8932409286499023, 25.585464477539062),
                                                      ((27, 40), 0.8892043232917786, 25.616695404052734)])
def test_published_metrics_match_recorded_torchmetrics_0_11(shape, ssim_tm, psnr_tm):
    # Values printed by torchmetrics 0.11.0 (the published environment) in float32:
    # StructuralSimilarityIndexMeasure()(pred, gt) and PeakSignalNoiseRatio()(pred, gt) on `_fixed`.
    gt, pred = _fixed(*shape)
    assert metrics.ssim_published(gt, pred) == pytest.approx(ssim_tm, abs=1e-6)
    assert metrics.psnr_published(gt, pred) == pytest.approx(psnr_tm, abs=1e-5)


def test_psnr_published_range_counts_from_zero():
    # torchmetrics' running target min/max start at 0: R = max(gt.max(), 0) − min(gt.min(), 0), not gt.ptp().
    gt, pred = _pair((16, 16))
    assert gt.min() > 0
    expected = 10 * np.log10(gt.max() ** 2 / np.mean((gt - pred) ** 2))
    assert metrics.psnr_published(gt, pred) == pytest.approx(expected, rel=1e-12)
    signed = gt - 2.0
    r = signed.max() - signed.min()
    expected = 10 * np.log10(r ** 2 / np.mean((signed - (pred - 2.0)) ** 2))
    assert metrics.psnr_published(signed, pred - 2.0) == pytest.approx(expected, rel=1e-12)


def test_nmse_published_normalises_each_image_by_its_max():
    gt, pred = _pair((18, 19))
    g, p = gt / gt.max(), pred / pred.max()
    expected = np.sum((p - g) ** 2) / np.sum(g ** 2)
    assert metrics.nmse_published(gt, pred) == pytest.approx(expected, rel=1e-12)
    assert metrics.nmse_published(gt, 7.0 * pred) == pytest.approx(expected, rel=1e-12)
    assert metrics.nmse(gt, 7.0 * pred) > 10 * metrics.nmse(gt, pred)
    assert np.isnan(metrics.nmse_published(gt, np.zeros_like(pred)))


def test_ssim_published_is_scale_invariant():
    gt, pred = _pair((21, 22))
    assert metrics.ssim_published(3.0 * gt, 3.0 * pred) == pytest.approx(metrics.ssim_published(gt, pred), rel=1e-10)


def test_support_masks_the_reconstruction_only():
    gt, pred = _pair((24, 24))
    support = np.zeros((24, 24))
    support[4:20, 3:18] = 1
    for fn in (metrics.nmse_published, metrics.psnr_published, metrics.ssim_published):
        assert fn(gt, pred, support=support) == pytest.approx(fn(gt, pred * support), rel=1e-12)
        assert fn(gt, pred, support=support) != pytest.approx(fn(gt * support, pred * support))


def test_evaluate_returns_both_conventions_from_complex_torch_input():
    rng = np.random.default_rng(5)
    gt = (rng.standard_normal((1, 1, 20, 23)) + 1j * rng.standard_normal((1, 1, 20, 23))).astype(np.complex64)
    pred = gt + 0.1 * rng.standard_normal(gt.shape).astype(np.float32)
    support = np.ones((20, 23))
    support[:, :4] = 0
    scores = metrics.evaluate(torch.from_numpy(gt), torch.from_numpy(pred), support=torch.from_numpy(support))
    assert set(scores) == set(metrics.METRICS) == {"nmse", "psnr", "ssim", "nmse_published", "psnr_published",
                                                   "ssim_published"}
    assert all(isinstance(v, float) for v in scores.values())
    g, p = np.abs(gt[0, 0]).astype(np.float64), np.abs(pred[0, 0]).astype(np.float64)
    assert scores["ssim"] == pytest.approx(structural_similarity(g, p, data_range=g.max()), rel=1e-12)
    assert scores["nmse"] == pytest.approx(metrics.nmse(g, p), rel=1e-12)  # fastMRI never masks
    assert scores["psnr_published"] == pytest.approx(metrics.psnr_published(g, p * support), rel=1e-12)


def test_identical_images_score_perfectly():
    gt, _ = _pair((16, 16))
    scores = metrics.evaluate(gt, gt)
    assert scores["nmse"] == 0 and scores["nmse_published"] == 0
    assert scores["ssim"] == pytest.approx(1.0) and scores["ssim_published"] == pytest.approx(1.0)
    assert scores["psnr"] == np.inf and scores["psnr_published"] == np.inf


def test_bad_inputs_raise_clear_errors():
    gt, pred = _pair((16, 16))
    with pytest.raises(ValueError, match="shape"):
        metrics.nmse(gt, pred[:, :15])
    with pytest.raises(ValueError, match="magnitude"):
        metrics.psnr(gt.astype(np.complex128), pred)
    with pytest.raises(ValueError, match="one 2-D image"):
        metrics.ssim(np.stack([gt, gt]), np.stack([pred, pred]))
    with pytest.raises(ValueError, match="support mask"):
        metrics.nmse_published(gt, pred, support=np.ones((8, 8)))
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim_published(gt[:10], pred[:10])
    with pytest.raises(ValueError, match=r"\[slices, H, W\]"):
        metrics.ssim_volume(gt, pred)
