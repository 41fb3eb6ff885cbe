"""`main.py --mode sample` end to end on tiny fastMRI-layout files: outputs, resume, baselines, bad input."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from runners.reconstruct import reconstruct
from runners.reconstructor import object_support, score_slice
from tests.conftest import check_records, np_fft2c, np_ifft2c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SLICES = [("file1000", "0"), ("file1000", "1"), ("file1001", "0"), ("file1001", "1")]


@pytest.fixture
def setup(knee_test, tmp_path):
    """`(config, workdir)`: `knee_test` with 3 slices per batch and its checkpoint in a training run's layout
    (`sampling.folder=run`, `sampling.ckpt=7`)."""
    config, _ = knee_test
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    os.replace(config.sampling.checkpoint, run / "checkpoint_7.pth")
    config.sampling.checkpoint, config.sampling.folder, config.sampling.ckpt = "", "run", 7
    config.sampling.batch_size, config.sampling.output_dir = 3, str(tmp_path / "out")
    return config, str(tmp_path)


def recon_image(out: str, fname: str, index: str) -> np.ndarray:
    return scipy.io.loadmat(os.path.join(out, f"recon_{fname}_{index}.mat"))["recon"]


def test_sample_writes_every_output_and_resumes(setup):
    config, workdir = setup
    summary = reconstruct(config, workdir)
    out = config.sampling.output_dir
    assert check_records(out, SLICES) == summary
    assert summary["nfe"] == 6 and summary["mask"] == "uniform_acc4_acs6" and summary["method"] == "hfssde-pc"
    mat = scipy.io.loadmat(os.path.join(out, "recon_file1000_1.mat"))
    assert mat["recon"].shape == (32, 32) and np.iscomplexobj(mat["recon"])
    assert os.path.getsize(os.path.join(out, "file1000_0.png")) > 1000

    written = {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in os.listdir(out) if ".mat" in name}
    again = reconstruct(config, workdir)  # every slice is finished: none is reconstructed again
    assert again == summary and check_records(out, SLICES) == summary
    assert {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in written} == written


def test_batch_composition_does_not_change_results(setup, tmp_path):
    config, workdir = setup
    reconstruct(config, workdir)
    config.sampling.batch_size = 1
    config.sampling.output_dir = str(tmp_path / "single")
    reconstruct(config, workdir)
    for fname, index in SLICES:
        batched = recon_image(str(tmp_path / "out"), fname, index)
        np.testing.assert_allclose(recon_image(str(tmp_path / "single"), fname, index), batched, rtol=0,
                                   atol=1e-5 * np.abs(batched).max())


def test_baselines_in_the_same_harness(setup, knee_test, tmp_path):
    config, workdir = setup
    for method in ("zero_filled", "sense", "l1wavelet"):
        config.sampling.method = method
        config.sampling.output_dir = str(tmp_path / method)
        config.sampling.l1_iters = 5
        summary = reconstruct(config, workdir)
        assert check_records(config.sampling.output_dir, SLICES) == summary and summary["nfe"] == 0
    # Zero-filled against numpy: the 40×32 k-space cropped to 32×32 in the image domain, divided by 1.5 std,
    # sampled by uniform_acc4_acs6 (the 6 centre columns and every 4th of the others from the first), `Σ S̄ F⁻¹(M k)`.
    _, folder = knee_test
    mask = np.zeros((32, 32))
    mask[:, 13:19] = 1
    mask[:, [c for c in range(32) if not 13 <= c < 19][::4]] = 1
    for fname, index in SLICES:
        k = np_fft2c(np_ifft2c(folder.kspace[fname][int(index)].astype(np.complex128))[:, 4:36])
        k /= 1.5 * np.std(k)
        maps = folder.maps[fname][int(index)][:, 4:36].astype(np.complex128)
        mat = scipy.io.loadmat(tmp_path / "zero_filled" / f"recon_{fname}_{index}.mat")
        truth = np.sum(np.conj(maps) * np_ifft2c(k), 0)
        np.testing.assert_allclose(mat["ground_truth"], truth, rtol=0, atol=1e-5 * np.abs(truth).max())
        np.testing.assert_allclose(mat["recon"], np.sum(np.conj(maps) * np_ifft2c(mask * k), 0), rtol=0,
                                   atol=1e-5 * np.abs(truth).max())
    # CG-SENSE and l1-wavelet fit the measured samples closer than zero-filling does, slice by slice.
    for method in ("sense", "l1wavelet"):
        with open(tmp_path / method / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert all(float(r["residual"]) < float(r["zf_residual"]) for r in rows), method


def test_max_slices(setup):
    config, workdir = setup
    config.sampling.max_slices = 3
    summary = reconstruct(config, workdir)
    assert check_records(config.sampling.output_dir, SLICES[:3]) == summary


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
    assert "current folder" not in result.stderr  # the path under --workdir is absolute


def test_a_relative_checkpoint_path_names_the_folder_it_was_read_from(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--mode", "sample", "--config",
                             os.path.join(ROOT, "configs", "hfssde", "brain_demo.py")], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no checkpoint at demo/hfssde_brain_demo.pth" in result.stderr
    assert f"read from the current folder, {tmp_path}: run from the repository root" in result.stderr


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
