"""Reconstruction over several processes (issue 13): `torchrun` ranks share the slices and fill one folder that
equals a single process's, resumable; `sampling.batch_size=0` picks the batch (the CUDA extrapolation with fake
numbers, the CPU choice for real)."""
from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import h5py
import pytest
import torch

import main
from configs.tiny import get_config
from models.ema import ExponentialMovingAverage
from runners import build, outputs
from runners.build import create_model
from runners.reconstruct import CPU_BATCH_SIZE, fit_batch_size, one_step, reconstruct, resolve_batch_size
from runners.reconstructor import Reconstructor
from utils.checkpoints import save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def setup(make_fastmri, tmp_path):
    """`(config, overrides)`: the tiny config on 2 files × 3 slices of 32×32 k-space with a tiny checkpoint, one
    slice per batch, and the same settings as `main.py` overrides."""
    folder = make_fastmri("knee_test", files=2, slices=3, coils=3, shape=(40, 32))
    config = get_config()
    model = create_model(config)
    checkpoint = str(tmp_path / "tiny.pth")
    save_checkpoint(checkpoint, {"model": model, "ema": ExponentialMovingAverage(model.parameters(), 0.99),
                                 "optimizer": torch.optim.Adam(model.parameters()), "step": 5})
    config.data.test_roots.knee = folder.root
    config.data.mask_root = str(tmp_path / "masks")
    config.sampling.datashift, config.sampling.batch_size, config.sampling.N = "knee", 1, 3
    config.sampling.checkpoint, config.sampling.output_dir = checkpoint, str(tmp_path / "single")
    overrides = [f"--config.data.test_roots.knee={folder.root}", f"--config.data.mask_root={tmp_path / 'masks'}",
                 "--config.sampling.datashift=knee", "--config.sampling.N=3", f"--config.sampling.checkpoint={checkpoint}"]
    return config, overrides


def psnr_by_slice(out: str) -> dict:
    with open(os.path.join(out, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len({(r["fname"], r["slice"]) for r in rows}), "one row per slice"
    return {(r["fname"], int(r["slice"])): float(r["psnr"]) for r in rows}


def torchrun(overrides: list[str], *args: str, mode: str = "sample") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "main.py",
               "--mode", mode, "--config", "configs/tiny.py", *overrides, *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def test_two_processes_fill_one_folder_equal_to_a_single_run_and_resume(setup, tmp_path):
    config, overrides = setup
    single = reconstruct(config, "unused")
    expected = psnr_by_slice(config.sampling.output_dir)
    out = str(tmp_path / "sharded")
    first = torchrun(overrides, f"--config.sampling.output_dir={out}", "--config.sampling.batch_size=1")
    assert "6 of 6 slice(s) to do, 3 on rank 0 of 2" in first.stderr
    assert "6 of 6 slice(s) to do, 3 on rank 1 of 2" in first.stderr
    # What a job killed half-way leaves: the rows of three slices. The rerun keeps them. One slice per batch as in
    # the single run: the same arithmetic to 1e-6 (batches of other sizes round differently,
    # test_automatic_batch_on_the_cpu_matches_batch_one).
    rows = outputs.read_rows(os.path.join(out, "metrics.csv"))
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=outputs.FIELDS + list(outputs.OPTIONAL_FIELDS))
        writer.writeheader()
        writer.writerows(rows[:3])
    os.unlink(os.path.join(out, "summary.json"))
    second = torchrun(overrides, f"--config.sampling.output_dir={out}", "--config.sampling.batch_size=1")
    assert "3 of 6 slice(s) to do, 2 on rank 0 of 2" in second.stderr
    merged = psnr_by_slice(out)
    assert sorted(merged) == sorted(expected)
    for key, value in expected.items():
        assert merged[key] == pytest.approx(value, abs=1e-6), key
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["n_slices"] == 6 and summary["psnr"] == pytest.approx(single["psnr"], abs=1e-6)
    for fname in ("file1000", "file1001"):
        with h5py.File(os.path.join(out, f"{fname}.h5")) as f:
            assert list(f["slices"]) == [0, 1, 2] and f["reconstruction"].shape == (3, 32, 32)
    with open(os.path.join(out, "volumes.csv"), newline="") as f:
        assert [r["n_slices"] for r in csv.DictReader(f)] == ["3", "3"]
    assert not glob.glob(os.path.join(out, "metrics.rank*")) and not glob.glob(os.path.join(out, ".*.tmp"))
    # One process resumes a folder of several: nothing is redone.
    config.sampling.output_dir = out
    again = reconstruct(config, "unused")
    assert again == summary


def test_calibrate_over_two_processes_is_fitted_once_on_rank_0(setup, tmp_path):
    config, overrides = setup
    out = tmp_path / "calibrate"
    run = torchrun([*overrides, f"--config.data.eval_root={config.data.test_roots.knee}",
                    "--config.sampling.method=sense", "--config.sampling.noise_replicas=2",
                    f"--config.sampling.output_dir={out}", "--config.sampling.batch_size=1"], "--tune_slices", "2",
                   mode="calibrate")
    assert "2 of 2 slice(s) to do, 1 on rank 0 of 2" in run.stderr
    assert "2 of 2 slice(s) to do, 1 on rank 1 of 2" in run.stderr
    assert run.stdout.count("calibrated on 2 validation slices") == 1, run.stdout
    report = json.load(open(out / "calibration.json"))
    assert report["slices"] == 2 and len(report["pred_psnr"]) == 2
    assert (out / "reliability.png").stat().st_size > 1000


def test_rows_a_killed_rank_left_are_kept_by_the_next_run(setup, caplog):
    config, _ = setup
    reconstruct(config, "unused")
    out = config.sampling.output_dir
    rows = outputs.read_rows(os.path.join(out, "metrics.csv"))
    # What a job killed before its end leaves: rank 1's rows in its own file, not yet in metrics.csv.
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=outputs.FIELDS + list(outputs.OPTIONAL_FIELDS))
        writer.writeheader()
        writer.writerows(rows[::2])
    with open(os.path.join(out, outputs.RANK_ROWS.format(1)), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=outputs.FIELDS + list(outputs.OPTIONAL_FIELDS))
        writer.writeheader()
        writer.writerows(rows[1::2])
    os.unlink(os.path.join(out, "summary.json"))
    caplog.set_level("INFO")
    summary = reconstruct(config, "unused")
    assert "0 of 6 slice(s) to do" in caplog.text
    assert summary["n_slices"] == 6 and outputs.read_rows(os.path.join(out, "metrics.csv")) == rows
    assert not os.path.exists(os.path.join(out, outputs.RANK_ROWS.format(1)))


def test_automatic_batch_on_the_cpu_matches_batch_one(setup, tmp_path, caplog):
    config, _ = setup
    reconstruct(config, "unused")
    expected = psnr_by_slice(config.sampling.output_dir)
    config.sampling.batch_size, config.sampling.output_dir = 0, str(tmp_path / "auto")
    caplog.set_level("INFO")
    reconstruct(config, "unused")
    assert f"sampling.batch_size=0 (automatic): {CPU_BATCH_SIZE} slice(s) per batch" in caplog.text
    auto = psnr_by_slice(config.sampling.output_dir)
    assert sorted(auto) == sorted(expected)
    for key, value in expected.items():
        assert auto[key] == pytest.approx(value, abs=1e-4)
    shutil.rmtree(config.sampling.output_dir)


def test_fit_batch_size_extrapolates_the_two_peaks():
    # 1 GiB fixed + 2 GiB per slice; 80 % of 40 GiB free: (32 − 1) / 2 → 15 slices.
    assert fit_batch_size(3 * GIB, 5 * GIB, 40 * GIB, n_slices=100) == 15
    assert fit_batch_size(3 * GIB, 5 * GIB, 40 * GIB, n_slices=100, fraction=1.0) == 19
    assert fit_batch_size(3 * GIB, 5 * GIB, 40 * GIB, n_slices=8) == 8  # never more than the slices
    assert fit_batch_size(3 * GIB, 5 * GIB, 2 * GIB, n_slices=8) == 1  # at least one
    assert fit_batch_size(1 * GIB, 4 * GIB, 10 * GIB, n_slices=8, fraction=1.0) == 3  # no negative fixed part
    assert fit_batch_size(2 * GIB, 2 * GIB, 10 * GIB, n_slices=7) == 7  # memory that does not grow
    assert fit_batch_size(2 * GIB, 2 * GIB, 10 * GIB, n_slices=0) == 1


def test_the_memory_probe_runs_one_sampler_step(setup):
    config, _ = setup
    reconstruct_batch = Reconstructor(config, "unused")
    mask = build.sample_mask(config)
    maps = torch.randn(2, 3, 32, 32, dtype=torch.complex64)
    images, nfe = reconstruct_batch(mask * maps, maps, mask, [0, 1], settings=one_step(reconstruct_batch.settings))
    assert nfe == 2 and images.shape == (2, 1, 32, 32)  # one corrector and one predictor evaluation
    assert config.sampling.N == 3 and reconstruct_batch(mask * maps, maps, mask, [0, 1])[1] == 6


def test_resolve_batch_size_on_the_cpu():
    config, mask = get_config(), torch.ones(1, 1, 32, 32)
    for batch_size, n_slices, expected in ((0, 6, CPU_BATCH_SIZE), (0, 2, 2), (0, 0, 1), (3, 6, 3), (3, 1, 3)):
        config.sampling.batch_size = batch_size
        assert resolve_batch_size(config, None, mask, 4, n_slices) == expected
    config.sampling.batch_size = -2
    with pytest.raises(ValueError, match=r"sampling.batch_size=-2: .* or 0 to choose"):
        resolve_batch_size(config, None, mask, 4, 6)


def test_out_of_memory_with_the_automatic_batch_suggests_a_fixed_one():
    config = get_config()
    config.sampling.batch_size = 0
    hint = main.out_of_memory_hint(torch.OutOfMemoryError("CUDA out of memory."), "sample", config)
    assert "a fixed sampling.batch_size below the automatic choice" in hint and "batch_size=1" in hint
