"""`main.py --mode sample` end to end on tiny fastMRI-layout files: outputs, resume, baselines, bad input."""
import csv
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from configs.tiny import get_config
from runners.build import create_model
from models.ema import ExponentialMovingAverage
from utils.checkpoints import save_checkpoint
from runners.reconstruct import reconstruct
from runners.reconstructor import object_support, score_slice

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def setup(make_fastmri, tmp_path):
    folder = make_fastmri("knee_test", files=2, slices=2, coils=3, shape=(40, 32))
    config = get_config()
    config.data.test_roots.knee = folder.root
    config.data.mask_root = str(tmp_path / "masks")
    config.sampling.datashift = "knee"
    config.sampling.batch_size = 3
    config.sampling.N = 3
    config.sampling.output_dir = str(tmp_path / "out")
    model = create_model(config)
    path = str(tmp_path / "run" / "checkpoints" / "checkpoint_7.pth")
    os.makedirs(os.path.dirname(path))
    save_checkpoint(path, {"model": model, "ema": ExponentialMovingAverage(model.parameters(), 0.99),
                           "optimizer": torch.optim.Adam(model.parameters()), "step": 5})
    config.sampling.folder, config.sampling.ckpt = "run", 7
    return config, str(tmp_path)


def test_sample_writes_every_output_and_resumes(setup):
    config, workdir = setup
    summary = reconstruct(config, workdir)
    out = config.sampling.output_dir
    for key in ("n_slices", "nmse", "psnr", "ssim", "nmse_published", "psnr_published", "ssim_published", "nfe",
                "seconds_per_slice", "method", "mask"):
        assert key in summary
    assert summary["n_slices"] == 4 and summary["nfe"] == 6 and summary["mask"] == "uniform_acc4_acs6"
    assert json.load(open(os.path.join(out, "summary.json"))) == summary
    rows = list(csv.DictReader(open(os.path.join(out, "metrics.csv"))))
    assert [(r["fname"], r["slice"]) for r in rows] == [("file1000", "0"), ("file1000", "1"), ("file1001", "0"),
                                                       ("file1001", "1")]
    mat = scipy.io.loadmat(os.path.join(out, "recon_file1000_1.mat"))
    assert mat["recon"].shape == (32, 32) and np.iscomplexobj(mat["recon"])
    with h5py.File(os.path.join(out, "file1001.h5")) as f:
        assert f["reconstruction"].shape == (2, 32, 32)
    assert os.path.getsize(os.path.join(out, "file1000_0.png")) > 1000

    again = reconstruct(config, workdir)
    assert len(list(csv.DictReader(open(os.path.join(out, "metrics.csv"))))) == 4
    assert again["psnr"] == summary["psnr"]


def test_batch_composition_does_not_change_results(setup, tmp_path):
    config, workdir = setup
    first = reconstruct(config, workdir)
    config.sampling.batch_size = 1
    config.sampling.output_dir = str(tmp_path / "single")
    second = reconstruct(config, workdir)
    assert second["psnr"] == pytest.approx(first["psnr"], abs=1e-3)


def test_baselines_in_the_same_harness(setup, tmp_path):
    config, workdir = setup
    for method in ("zero_filled", "sense", "l1wavelet"):
        config.sampling.method = method
        config.sampling.output_dir = str(tmp_path / method)
        config.sampling.l1_iters = 5
        summary = reconstruct(config, workdir)
        assert summary["n_slices"] == 4 and summary["nfe"] == 0
    zf = json.load(open(tmp_path / "zero_filled" / "summary.json"))
    assert zf["psnr"] == pytest.approx(zf["zf_psnr"])


def test_max_slices(setup):
    config, workdir = setup
    config.sampling.max_slices = 3
    assert reconstruct(config, workdir)["n_slices"] == 3


def test_bad_input(setup, tmp_path):
    config, workdir = setup
    config.sampling.ckpt = 8
    with pytest.raises(FileNotFoundError, match=r"checkpoint_8.pth.*bash train_fastMRI.sh hfssde"):
        reconstruct(config, workdir)
    config.sampling.ckpt = 7
    config.sampling.method = "dps"
    with pytest.raises(ValueError, match="unknown sampling.method 'dps'.*zero_filled"):
        reconstruct(config, workdir)
    config.sampling.method = "pc"
    config.sampling.predictor = "heun"
    with pytest.raises(ValueError, match="unknown predictor 'heun'"):
        reconstruct(config, workdir)
    config.sampling.predictor = "euler_maruyama"
    os.makedirs(config.data.mask_root, exist_ok=True)
    scipy.io.savemat(os.path.join(config.data.mask_root, "uniform_acc4_acs6.mat"), {"mask": np.ones((20, 20))})
    with pytest.raises(ValueError, match=r"uniform_acc4_acs6.mat is 20×20 but data.image_size is 32"):
        reconstruct(config, workdir)


def test_empty_test_set(setup, tmp_path):
    config, workdir = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    config.data.test_roots.knee = str(empty)
    with pytest.raises(FileNotFoundError, match="holds no .h5 files"):
        reconstruct(config, workdir)


def test_main_prints_one_line_for_a_missing_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "main.py", "--mode", "sample", "--config", "configs/tiny.py",
                             "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert "main.py: error: no checkpoint at" in result.stderr and "Traceback" not in result.stderr


def test_cuda_speed_options_are_ignored_on_cpu(setup, caplog):
    config, workdir = setup
    config.sampling.bf16 = config.sampling.compile = True
    summary = reconstruct(config, workdir)
    assert summary["n_slices"] == 4
    assert "sampling.bf16=True needs CUDA" in caplog.text and "sampling.compile=True needs CUDA" in caplog.text


def test_a_folder_of_another_setting_is_never_reused(setup):
    config, workdir = setup
    reconstruct(config, workdir)
    config.sampling.batch_size, config.sampling.show_progress = 1, True  # they do not shape the result
    assert reconstruct(config, workdir)["n_slices"] == 4
    config.sampling.max_slices = 2
    with pytest.raises(ValueError, match=r"another setting \(differs in slices\)"):
        reconstruct(config, workdir)
    config.sampling.max_slices = 0
    config.sampling.snr_accelerated = 0.5
    with pytest.raises(ValueError, match=r"another setting \(differs in settings.snr\)"):
        reconstruct(config, workdir)


def test_object_support_is_the_filled_region_above_two_percent_of_the_maximum():
    truth = np.zeros((9, 9))
    truth[2:7, 2:7] = 1.0
    truth[4, 4] = 0.0  # a hole inside the object is filled
    truth[0, 0] = 0.015  # below 2 % of the maximum: background
    truth[8, 8] = 0.03  # above it: a separate speck belongs to the support
    expected = np.zeros((9, 9), bool)
    expected[2:7, 2:7] = expected[8, 8] = True
    np.testing.assert_array_equal(object_support(truth), expected)


def test_score_slice_flags_a_residual_far_above_zero_filled():
    rng = np.random.default_rng(0)
    truth = rng.random((16, 16))
    row = score_slice(truth + 0.01, truth + 0.1, truth, residual=0.3, zf_residual=0.1)
    assert row["flagged"] == 1 and row["psnr"] > row["zf_psnr"] and "std_rank_corr" not in row
    assert score_slice(truth, truth, truth, residual=0.25, zf_residual=0.1)["flagged"] == 0
