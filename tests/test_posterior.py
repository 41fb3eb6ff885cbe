"""Posterior samples (`sampling.num_samples`): noise streams, batch invariance, the std map and its outputs."""
import json
import os

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from scipy.ndimage import binary_fill_holes
from scipy.stats import spearmanr

import datasets
import sampling
from configs.hfssde.phantom_demo import get_config as phantom_config
from runners import build
from runners.reconstruct import reconstruct
from runners.reconstructor import Reconstructor
from utils import metrics, mri

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config(num_samples=1, steps=3):
    config = phantom_config()
    config.sampling.checkpoint = os.path.join(ROOT, config.sampling.checkpoint)
    config.data.test_roots.phantom = os.path.join(ROOT, config.data.test_roots.phantom)
    config.sampling.method, config.sampling.N, config.sampling.num_samples = "pc", steps, num_samples
    config.sampling.show_progress = False
    config.device = "cpu"
    return config


@pytest.fixture(scope="module")
def slices():
    config = demo_config()
    batch = datasets.first_slices(datasets.make_dataset(config, "test"), 2)
    mask = build.sample_mask(config)
    return mask * batch["kspace"], batch["maps"], mask


def test_posterior_seeds_keep_the_slice_seed_first_and_are_distinct():
    assert sampling.posterior_seeds([5, 9], 1) == [5, 9]
    seeds = sampling.posterior_seeds([5, 9], 3)
    assert seeds[0] == 5 and seeds[3] == 9 and len(set(seeds)) == 6
    assert sampling.posterior_seeds([9], 3) == seeds[3:]


def test_samples_are_reproducible_batch_invariant_and_one_sample_is_the_single_reconstruction(slices):
    y, maps, mask = slices
    many, nfe = Reconstructor(demo_config(3), ROOT)(y, maps, mask, [11, 12])
    assert many.shape == (2, 3) + tuple(y.shape[-2:]) and nfe == 3 * 6  # 3 samples of 3 PC steps
    again, _ = Reconstructor(demo_config(3), ROOT)(y[1:], maps[1:], mask, [12])
    torch.testing.assert_close(again[0], many[1], atol=1e-4, rtol=1e-4)
    one, _ = Reconstructor(demo_config(1), ROOT)(y, maps, mask, [11, 12])
    torch.testing.assert_close(one[:, 0], many[:, 0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(many[:, 1], many[:, 0], atol=1e-3)


@pytest.mark.parametrize("method, steps, ratio", [("pc", 20, 0.1), ("ddim", 10, 0.05)])
def test_std_vanishes_on_the_measured_low_frequencies_and_not_elsewhere(slices, method, steps, ratio):
    y, maps, mask = slices
    config = demo_config(3, steps=steps)
    config.sampling.method, config.sampling.eta, config.sampling.project_score = method, 0.85, True
    samples, _ = Reconstructor(config, ROOT)(y[:1], maps[:1], mask, [3])
    spread = mri.fft2c(samples[0]).std(dim=0)  # per k-space sample, over the posterior samples
    lowfreq = build.make_sde(config).lowfreq_mask.reshape(spread.shape) > 0
    unmeasured = mask.reshape(spread.shape) == 0
    assert spread[unmeasured].mean() > 0
    assert spread[lowfreq].mean() < ratio * spread[unmeasured].mean()


def test_calibration_figures():
    rng = np.random.default_rng(0)
    truth = np.ones((32, 32))
    std = rng.uniform(0.01, 0.1, (32, 32))
    mean = truth + std * rng.standard_normal((32, 32))
    scores = metrics.calibration(truth, mean, std, np.ones((32, 32)))
    assert 0.9 < scores["coverage_2std"] <= 1 and scores["std_rank_corr"] > 0.4
    assert metrics.calibration(truth, mean, 0.01 * std, np.ones((32, 32)))["coverage_2std"] < 0.2


def test_reconstruction_outputs_hold_mean_std_samples_and_calibration(tmp_path):
    config = demo_config(2)
    config.sampling.max_slices, config.sampling.save_samples = 1, True
    config.sampling.output_dir = str(tmp_path / "k2")
    summary = reconstruct(config, str(tmp_path))
    mat = scipy.io.loadmat(tmp_path / "k2" / "recon_phantom_test_0000_0.mat")
    assert mat["samples"].shape == (2,) + mat["recon"].shape and mat["std"].shape == mat["recon"].shape
    np.testing.assert_allclose(mat["recon"], mat["samples"].mean(0), atol=1e-5)
    # The std map and the calibration of the one slice against scipy: the std of the samples' magnitudes; over the
    # object (magnitude above 2 % of its maximum, holes filled) the Spearman correlation of the std with the error
    # of the mean's magnitude, and the fraction of pixels whose error is within two stds.
    std = np.abs(mat["samples"]).std(axis=0, ddof=1)
    np.testing.assert_allclose(mat["std"], std, rtol=1e-4, atol=1e-6 * std.max())
    truth = np.abs(mat["ground_truth"]).astype(np.float64)
    support = binary_fill_holes(truth > 0.02 * truth.max())
    error = np.abs(np.abs(mat["recon"]).astype(np.float64) - truth)[support]
    spread = mat["std"][support].astype(np.float64)
    assert summary["num_samples"] == 2 and 0.01 < support.mean() < 0.99
    assert summary["coverage_2std"] == pytest.approx(np.mean(error <= 2 * spread), abs=1.5 / support.sum())
    assert summary["std_rank_corr"] == pytest.approx(spearmanr(spread, error).statistic, abs=1e-6)
    with h5py.File(tmp_path / "k2" / "phantom_test_0000.h5") as f:
        assert f["std"].shape == f["reconstruction"].shape
    header = open(tmp_path / "k2" / "metrics.csv").readline()
    assert "std_rank_corr" in header and "coverage_2std" in header
    single = demo_config(1)
    single.sampling.max_slices, single.sampling.output_dir = 1, str(tmp_path / "k1")
    alone = reconstruct(single, str(tmp_path))
    assert "coverage_2std" not in alone and "sample_psnr" not in alone
    k1 = scipy.io.loadmat(tmp_path / "k1" / "recon_phantom_test_0000_0.mat")
    assert "std" not in k1 and "sample" not in k1
    assert json.load(open(tmp_path / "k1" / "summary.json"))["num_samples"] == 1
    # Sample 0 of the K = 2 run is the single reconstruction, and its own metrics are kept beside the mean's.
    np.testing.assert_array_equal(mat["sample"], mat["samples"][0])
    np.testing.assert_allclose(mat["sample"], k1["recon"], atol=1e-4 * np.abs(k1["recon"]).max())
    assert "sample_psnr" in header and "sample_ssim" in header
    assert summary["sample_psnr"] == pytest.approx(alone["psnr"], abs=0.01)
    assert summary["sample_ssim"] == pytest.approx(alone["ssim"], abs=1e-4)


def test_baselines_give_one_image_whatever_num_samples_says(slices):
    y, maps, mask = slices
    config = demo_config(2)
    config.sampling.method = "sense"
    images, nfe = Reconstructor(config, ROOT)(y, maps, mask, [1, 2])
    assert images.shape == (2, 1) + tuple(y.shape[-2:]) and nfe == 0


def test_an_unknown_final_dc_is_named_before_any_sampling():
    config = demo_config()
    config.sampling.final_dc = "exact"
    with pytest.raises(ValueError, match="unknown sampling.final_dc 'exact'"):
        Reconstructor(config, ROOT)
