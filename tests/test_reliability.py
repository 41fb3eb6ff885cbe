"""Faults done for real (issue 10): two writers in one folder, SIGKILL and rerun, NaN and damaged chunks, unwritable
folders, masks of other sizes, checkpoints of another SDE, honest panels, out-of-memory; and the data residual of
every reconstructed slice (issue 9, item 6). Reconstructions use the tiny config on 32×32 files."""
from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import scipy.io
import torch

import datasets
import main
from configs.tiny import get_config
from runners import build, folders, outputs, reconstruct as recon_module
from runners.build import checkpoint_record, create_model
from runners.export import export
from runners.reconstruct import reconstruct
from runners.reconstructor import Reconstructor, data_residual, is_flagged, method_label
from runners.run_folder import META_CHECKPOINT
from runners.train import train
from tests.conftest import check_records, np_fft2c, save_tiny_checkpoint
from utils import checkpoints, figures, masks
from utils.generate_mask import main as generate_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def setup(make_fastmri, tmp_path):
    """`(config, overrides)`: the tiny config reading 2 files × 3 slices of 32×32 k-space with a tiny checkpoint,
    and the same settings as `main.py` overrides."""
    folder = make_fastmri("knee_test", files=2, slices=3, coils=3, shape=(40, 32))
    settings = {"data.test_roots.knee": folder.root, "data.mask_root": str(tmp_path / "masks"),
                "sampling.datashift": "knee", "sampling.batch_size": 1, "sampling.N": 3,
                "sampling.checkpoint": save_tiny_checkpoint(str(tmp_path / "ckpt" / "tiny.pth"), get_config()),
                "sampling.output_dir": str(tmp_path / "out")}
    config = get_config()
    for key, value in settings.items():
        group, name = key.split(".", 1)
        if "." in name:
            name, leaf = name.split(".")
            config[group][name][leaf] = value
        else:
            config[group][name] = value
    return config, [f"--config.{k}={v}" for k, v in settings.items()], folder


def sample_command(*args: str) -> list[str]:
    return [sys.executable, "main.py", "--mode", "sample", "--config", "configs/tiny.py", *args]


def error_line(stderr: str) -> str:
    """The `main.py: error:` line of a failed run (there must be exactly one and no traceback)."""
    assert "Traceback" not in stderr and "Caught" not in stderr, stderr
    [line] = [ln for ln in stderr.splitlines() if ln.startswith("main.py: error:")]
    return line


def csv_rows(out: str) -> list[tuple[str, str]]:
    with open(os.path.join(out, "metrics.csv"), newline="") as f:
        return [(r["fname"], r["slice"]) for r in csv.DictReader(f)]


ALL_SLICES = [(f"file100{i}", str(s)) for i in range(2) for s in range(3)]


# ---- 1. two reconstructions into one folder at once --------------------------------------------------------------
def test_two_concurrent_reconstructions_into_one_folder(setup):
    config, overrides, _ = setup
    out = config.sampling.output_dir
    command = sample_command(*overrides, "--config.sampling.N=10")
    runs = [subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.communicate(timeout=300)[1], run.returncode)[::-1] for run in runs]
    for code, stderr in results:
        if code != 0:  # refused after waiting for the other writer: one line naming it
            assert f"reconstruction folder {out} is being written by process" in error_line(stderr)
    assert any(code == 0 for code, _ in results)
    assert any("waiting up to" in stderr or code != 0 for code, stderr in results), "the runs never met"
    check_records(out, ALL_SLICES)


def _hold_lock(folder: str, fork_child: bool = False) -> tuple[subprocess.Popen, int]:
    """A process holding `folder`'s lock until killed, and the pid of a child it forked after locking (like a
    DataLoader worker; 0 without `fork_child`)."""
    code = (f"import os, sys, time; sys.path.insert(0, {ROOT!r}); from runners.folders import lock_folder\n"
            f"lock = lock_folder({folder!r}, 'key', 'folder')\n"
            + ("child = os.fork()\nif child == 0:\n    time.sleep(60); os._exit(0)\n" if fork_child else "child = 0\n")
            + "print(child, flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return holder, int(holder.stdout.readline())


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(setup, monkeypatch):
    config, _, _ = setup
    monkeypatch.setattr(folders, "DYING_WAIT_S", 0.5)
    holder, _ = _hold_lock(config.sampling.output_dir)
    try:
        with pytest.raises(folders.FolderBusy, match=rf"is being written by process {holder.pid} "):
            reconstruct(config, "unused")
        assert sorted(os.listdir(config.sampling.output_dir)) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    assert reconstruct(config, "unused")["n_slices"] == 6


def test_lock_is_released_at_sigkill_even_when_a_forked_child_lives_on(tmp_path):
    holder, child = _hold_lock(str(tmp_path), fork_child=True)
    holder.kill()
    holder.wait()
    try:
        os.kill(child, 0)  # the child lives on, like the orphaned DataLoader worker of a killed training
        lock, _ = folders.try_lock(str(tmp_path), "key")
        assert lock is not None
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)


# ---- 2. SIGKILL during a reconstruction, then rerun --------------------------------------------------------------
def test_sigkill_during_reconstruction_then_rerun_completes_every_slice(setup):
    config, overrides, _ = setup
    out = config.sampling.output_dir
    command = sample_command(*overrides, "--config.sampling.N=10")
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(out, "recon_file1000_1.mat")):
            assert first.poll() is None and time.time() < deadline, "the first run ended before it was killed"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait()
    assert len(csv_rows(out)) < 6
    # What a kill during a non-atomic write left behind: an empty .mat of a finished slice, a temporary file.
    open(os.path.join(out, "recon_file1000_0.mat"), "w").close()
    open(os.path.join(out, ".recon_file1001_2.mat.12345.tmp"), "w").close()
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "recon_file1000_0.mat is missing or unreadable" in rerun.stderr
    assert re.search(r"removed \d+ temporary file\(s\) .*\.recon_file1001_2\.mat\.12345\.tmp", rerun.stderr)
    check_records(out, ALL_SLICES)


def test_duplicate_rows_of_an_old_folder_count_once(setup):
    config, _, _ = setup
    reconstruct(config, "unused")
    out = config.sampling.output_dir
    path = os.path.join(out, "metrics.csv")
    lines = open(path).read().splitlines()
    open(path, "w").write("\n".join(lines + lines[1:]) + "\n")
    assert reconstruct(config, "unused")["n_slices"] == 6
    check_records(out, ALL_SLICES)


# ---- 3, 4. training: SIGKILL then an immediate rerun, three times ------------------------------------------------
def train_command(workdir: str, phantom: str, *args: str) -> list[str]:
    return [sys.executable, "main.py", "--mode", "train", "--config", "configs/tiny.py", "--workdir", workdir,
            f"--config.data.root={phantom}/train", f"--config.data.eval_root={phantom}/val", *args]


def _meta_step(workdir) -> int:
    paths = glob.glob(os.path.join(str(workdir), "*", META_CHECKPOINT))
    if not paths:
        return -1
    try:
        return int(torch.load(paths[0], map_location="cpu", weights_only=True)["step"])
    except (OSError, RuntimeError, EOFError):
        return -1


@pytest.mark.slow  # four training processes (~60 s); the cause is tested fast by test_lock_is_released_at_sigkill_...
def test_training_killed_and_rerun_at_once_three_times_resumes_the_same_run(phantom, tmp_path):
    n_iters = 30
    command = train_command(str(tmp_path), phantom, f"--config.training.n_iters={n_iters}",
                            "--config.training.eval_freq=0", "--config.training.num_workers=2",
                            "--config.training.snapshot_freq_for_preemption=5")
    logs = [open(tmp_path / f"run{i}.log", "w") for i in range(4)]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=logs[0])
    kept = -1
    try:
        for i in range(1, 4):
            deadline = time.time() + 120
            while _meta_step(tmp_path) <= kept:
                assert run.poll() is None and time.time() < deadline, open(logs[i - 1].name).read()
                time.sleep(0.02)
            # What a kill during a checkpoint write leaves: a temporary file beside the checkpoint.
            [meta] = glob.glob(str(tmp_path / "*" / "checkpoints-meta"))
            open(os.path.join(meta, f".checkpoint.pth.9999{i}.tmp"), "wb").close()
            run.send_signal(signal.SIGKILL)
            killed, run = run, subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=logs[i])
            killed.wait()
            kept = _meta_step(tmp_path)
            assert kept < n_iters
        assert run.wait(timeout=300) == 0, open(logs[3].name).read()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    [run_dir] = glob.glob(str(tmp_path / "2*"))
    for i, log in enumerate(logs[1:], 1):
        text = open(log.name).read()
        assert "resumed from" in text and "Traceback" not in text, text
        assert re.search(rf"removed \d+ temporary file\(s\) .*checkpoint\.pth\.9999{i}\.tmp", text), text
    assert _meta_step(tmp_path) == n_iters and os.path.exists(os.path.join(run_dir, "finished"))
    assert not glob.glob(os.path.join(run_dir, "*", "*.tmp")) and not glob.glob(os.path.join(run_dir, "*", ".*.tmp"))


def test_rerun_while_the_run_is_trained_is_refused_naming_the_process(phantom, tmp_path, monkeypatch):
    config = get_config()
    config.data.root, config.data.eval_root = f"{phantom}/train", f"{phantom}/val"
    config.training.n_iters = 2
    run_dir = train(config, str(tmp_path))
    os.remove(os.path.join(run_dir, "finished"))  # an unfinished run of this config
    monkeypatch.setattr(folders, "DYING_WAIT_S", 0.5)
    holder, _ = _hold_lock(run_dir)
    try:
        with pytest.raises(SystemExit, match=rf"unfinished run {run_dir} of this config is being trained by process "
                                             rf"{holder.pid} "):
            train(config, str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    assert glob.glob(str(tmp_path / "2*")) == [run_dir]
    checkpoint = torch.load(os.path.join(run_dir, META_CHECKPOINT), map_location="cpu", weights_only=True)
    assert checkpoint["config"]["training.sde"] == "hfssde" and checkpoint["config"]["model.nf"] == 32


# ---- 5, 6. broken input ------------------------------------------------------------------------------------------
def _nan_in(folder, stem: str, index: int, key: str = "kspace") -> None:
    path = os.path.join(folder.root if key == "kspace" else folder.maps_root, stem + ".h5")
    with h5py.File(path, "r+") as f:
        data = f[key][index]
        data[0, 20, 16] = np.nan
        f[key][index] = data


def test_nan_kspace_stops_before_the_slice_or_is_skipped(setup, caplog):
    config, _, folder = setup
    _nan_in(folder, "file1000", 1)
    with pytest.raises(datasets.DataError, match=r"file1000\.h5: 'kspace' of slice 1 holds 1 non-finite values"):
        reconstruct(config, "unused")
    out = config.sampling.output_dir
    assert csv_rows(out) == [("file1000", "0")] and not os.path.exists(os.path.join(out, "recon_file1000_1.mat"))
    config.data.skip_broken = True
    summary = reconstruct(config, "unused")
    assert "skipping a broken slice" in caplog.text and "file1000.h5: 'kspace' of slice 1" in caplog.text
    assert summary == check_records(out, [key for key in ALL_SLICES if key != ("file1000", "1")])


def test_nan_maps_are_named(setup):
    config, _, folder = setup
    _nan_in(folder, "file1001", 2, "s_maps")
    with pytest.raises(datasets.DataError, match=r"file1001\.h5: 's_maps' of slice 2 holds 1 non-finite values"):
        reconstruct(config, "unused")


def _damage_chunk(path: str, index: int) -> None:
    """Rewrite `path`'s k-space as gzip chunks of one slice each and overwrite the middle of chunk `index`."""
    with h5py.File(path, "r+") as f:
        data = f["kspace"][()]
        del f["kspace"]
        f.create_dataset("kspace", data=data, chunks=(1,) + data.shape[1:], compression="gzip")
    with h5py.File(path, "r") as f:
        info = f["kspace"].id.get_chunk_info_by_coord((index, 0, 0, 0))
    with open(path, "r+b") as f:
        f.seek(info.byte_offset + info.size // 2)
        f.write(b"\xff" * 64)


def test_damaged_chunk_in_worker_processes_is_one_line_or_skipped(setup):
    config, overrides, folder = setup
    path = os.path.join(folder.root, "file1001.h5")
    _damage_chunk(path, 1)
    command = sample_command(*overrides, "--config.sampling.batch_size=4", "--config.training.num_workers=2",
                             "--config.sampling.method=zero_filled")
    failed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    assert error_line(failed.stderr).startswith(f"main.py: error: {path}: 'kspace' of slice 1 cannot be read (")
    skipped = subprocess.run(command + ["--config.data.skip_broken=True"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert skipped.returncode == 0, skipped.stderr
    assert f"skipping a broken slice: {path}: 'kspace' of slice 1 cannot be read" in skipped.stderr
    check_records(config.sampling.output_dir, [key for key in ALL_SLICES if key != ("file1001", "1")])


# ---- 7. masks of another size ------------------------------------------------------------------------------------
def _digest(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_mask_hint_command_works_and_never_replaces_a_shipped_mask(tmp_path, monkeypatch):
    root = str(tmp_path / "mask")
    shutil.copytree(os.path.join(ROOT, "mask"), root)
    shipped = os.path.join(root, "cartesian_acc8_acs16.mat")
    before = _digest(shipped)
    config = get_config()
    config.data.mask_root, config.data.image_size = root, 128
    config.sampling.mask_type, config.sampling.acc, config.sampling.acs = "cartesian", 8, 16
    with pytest.raises(ValueError, match="is 320×320 but data.image_size is 128") as err:
        build.sample_mask(config)
    command = shlex.split(str(err.value).split("`")[1])
    assert command[0] == "python"
    result = subprocess.run([sys.executable] + command[1:], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    got = build.sample_mask(config)[0, 0].numpy()
    np.testing.assert_array_equal(got, masks.make_mask("cartesian", 128, acc=8, acs=16,
                                                       seed=config.sampling.mask_seed))
    assert os.path.exists(os.path.join(root, "128", "cartesian_acc8_acs16.mat")) and _digest(shipped) == before
    with pytest.raises(SystemExit):  # another seed at 320 would replace the shipped mask: refused
        generate_main(["--type", "cartesian", "--acc", "8", "--acs", "16", "--seed", "5", "--out", root])
    assert _digest(shipped) == before
    monkeypatch.chdir(tmp_path)  # the default folder of another size is mask/<size>/
    assert generate_main(["--type", "uniform", "--acc", "4", "--acs", "8", "--size", "64"]) == 0
    assert masks.load_mask(str(tmp_path / "mask" / "64" / "uniform_acc4_acs8.mat")).shape == (64, 64)
    assert _digest(shipped) == before


# ---- 8. output folders that cannot be written --------------------------------------------------------------------
@pytest.fixture
def unwritable(tmp_path) -> str:
    """A folder this process cannot write in (root writes anywhere that permissions allow, but not in /sys)."""
    if os.geteuid() == 0:
        yield "/sys"
        return
    path = tmp_path / "readonly"
    path.mkdir()
    path.chmod(0o500)
    yield str(path)
    path.chmod(0o700)


def test_unwritable_or_blocked_output_folders_are_one_line(setup, tmp_path, unwritable, phantom):
    config, overrides, _ = setup
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config.sampling.output_dir = str(blocker / "out")
    with pytest.raises(folders.FolderError, match=rf"sampling.output_dir={blocker}/out cannot be a folder: "
                                                  rf"{blocker} is a file"):
        reconstruct(config, "unused")
    config.sampling.output_dir = unwritable
    with pytest.raises(folders.FolderError, match=rf"sampling.output_dir={unwritable} is not writable"):
        reconstruct(config, "unused")
    config.sampling.output_dir = os.path.join(unwritable, "out")
    with pytest.raises(folders.FolderError, match=rf"sampling.output_dir={unwritable}/out cannot be created"):
        reconstruct(config, "unused")
    result = subprocess.run(sample_command(*overrides, f"--config.sampling.output_dir={blocker}/out"), cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert f"{blocker} is a file" in error_line(result.stderr)
    for workdir, message in ((str(blocker / "runs"), f"{blocker} is a file"),
                             (unwritable, f"--workdir={unwritable} is not writable")):
        result = subprocess.run(train_command(workdir, phantom, "--config.training.n_iters=1"), cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert message in result.stderr.strip().splitlines()[-1]


# ---- 9. a checkpoint of another SDE ------------------------------------------------------------------------------
def test_checkpoint_of_another_sde_is_named_in_one_warning(setup, tmp_path, caplog):
    config, _, _ = setup
    config.sampling.checkpoint = save_tiny_checkpoint(str(tmp_path / "ckpt" / "vp.pth"), get_config("vpsde"))
    config.sampling.max_slices = 1
    reconstruct(config, "unused")
    [warning] = [r.getMessage() for r in caplog.records if "was trained with" in r.getMessage()]
    assert "training.sde='vpsde' (config: 'hfssde')" in warning and "\n" not in warning


def test_exported_checkpoint_keeps_the_record(tmp_path, caplog):
    path = save_tiny_checkpoint(str(tmp_path / "vp.pth"), get_config("vpsde"))
    export(path, str(tmp_path / "small.pth"))
    config = get_config()
    checkpoints.load_model_weights(tmp_path / "small.pth", create_model(config), True, "cpu", checkpoint_record(config))
    assert "training.sde='vpsde' (config: 'hfssde')" in caplog.text
    caplog.clear()
    checkpoints.load_model_weights(tmp_path / "small.pth", create_model(config), True, "cpu",
                                   checkpoint_record(get_config("vpsde")))
    assert "was trained with" not in caplog.text


# ---- 10. panels show what was scored -----------------------------------------------------------------------------
def test_panel_shows_the_scored_images_with_method_title_and_error_scale(setup, monkeypatch):
    config, _, folder = setup
    config.data.test_roots.phantom = folder.root
    config.sampling.datashift = "phantom"  # the published metrics mask the object support; the panel must not
    config.sampling.max_slices = 1
    panels = []
    monkeypatch.setattr(outputs, "save_panel", lambda *args: panels.append(args) or figures.save_panel(*args))
    figs = []
    monkeypatch.setattr(figures.plt, "close", figs.append)
    reconstruct(config, "unused")
    out = config.sampling.output_dir
    mat = scipy.io.loadmat(os.path.join(out, "recon_file1000_0.mat"))
    [(path, zf, recon, truth, zf_metrics, metrics, title, std)] = panels
    assert std is None  # one sample: no posterior std panel
    np.testing.assert_array_equal(recon, np.abs(mat["recon"]))
    assert title == "HFS-SDE PC, 3 steps" and os.path.getsize(os.path.join(out, "file1000_0.png")) > 1000
    [row] = outputs.read_rows(os.path.join(out, "metrics.csv"))
    assert (metrics["psnr"], metrics["ssim"]) == (row["psnr"], row["ssim"])
    axes = figs[0].axes
    assert axes[1].get_title().startswith("HFS-SDE PC, 3 steps\nPSNR") and len(axes) == 5  # 4 panels + colour bar
    np.testing.assert_array_equal(axes[1].images[0].get_array(), recon)
    np.testing.assert_allclose(axes[3].images[0].get_array(), np.abs(recon - truth))
    assert axes[3].images[0].get_clim() == pytest.approx((0, truth.max() / 5))


def test_baseline_panel_title():
    config = get_config()
    config.sampling.method = "sense"
    assert method_label(config) == "CG-SENSE"
    config = get_config("vpsde")
    config.sampling.N = 100
    assert method_label(config) == "VP-SDE PC, 100 steps"


# ---- 11. main.py: out of memory and bugs -------------------------------------------------------------------------
@pytest.fixture
def sample_flags():
    main.FLAGS(["main.py", "--mode", "sample", "--config", os.path.join(ROOT, "configs", "tiny.py")])
    main.FLAGS.config.sampling.batch_size = 4
    yield
    main.FLAGS.unparse_flags()


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 1024 bytes")])
def test_out_of_memory_is_one_line_suggesting_a_smaller_batch(sample_flags, monkeypatch, error):
    def fail(config, workdir):
        raise error
    monkeypatch.setattr(recon_module, "reconstruct", fail)
    with pytest.raises(SystemExit) as info:
        main.main([])
    text = str(info.value)
    assert text.startswith("main.py: error: out of memory (") and "--config.sampling.batch_size=2" in text


def test_other_runtime_errors_keep_their_traceback_user_errors_do_not(sample_flags, monkeypatch, tmp_path):
    def bug(config, workdir):
        raise RuntimeError("a bug")
    monkeypatch.setattr(recon_module, "reconstruct", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main.main([])
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")

    def unreadable(config, workdir):
        checkpoints.load_model_weights(str(broken), create_model(config), False, "cpu")
    monkeypatch.setattr(recon_module, "reconstruct", unreadable)
    with pytest.raises(SystemExit, match=r"main.py: error: cannot read checkpoint .*broken.pth"):
        main.main([])


# ---- issue 9, item 6: the data residual --------------------------------------------------------------------------
def test_data_residual_equals_its_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 6, 5)) + 1j * rng.standard_normal((2, 1, 6, 5))
    maps = rng.standard_normal((2, 3, 6, 5)) + 1j * rng.standard_normal((2, 3, 6, 5))
    mask = (rng.random((6, 5)) < 0.5).astype(np.float32)
    y = mask * (rng.standard_normal((2, 3, 6, 5)) + 1j * rng.standard_normal((2, 3, 6, 5)))
    expected = [np.linalg.norm(mask * np_fft2c(maps[b] * x[b]) - y[b]) / np.linalg.norm(y[b]) for b in range(2)]
    got = data_residual(*(torch.from_numpy(v.astype(np.complex64)) for v in (x, y, maps)), torch.from_numpy(mask))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    assert data_residual(torch.zeros(1, 1, 6, 5, dtype=torch.complex64), torch.zeros(1, 3, 6, 5, dtype=torch.complex64),
                         torch.from_numpy(maps[:1].astype(np.complex64)), torch.from_numpy(mask)).item() == 0


def test_residual_in_every_row_and_summary_and_divergence_is_flagged(setup, monkeypatch, caplog):
    config, _, _ = setup
    config.sampling.method = "zero_filled"
    summary = reconstruct(config, "unused")
    rows = outputs.read_rows(os.path.join(config.sampling.output_dir, "metrics.csv"))
    assert all(r["residual"] == r["zf_residual"] and 0 < r["residual"] < 1 and r["flagged"] == 0 for r in rows)
    assert summary["residual"] == pytest.approx(summary["zf_residual"]) and summary["n_flagged"] == 0

    def diverged(self, y, csm, mask, seeds, settings=None):  # a method that blew up: large noise, not the data
        return 100 * torch.randn(y.shape[0], 1, *y.shape[-2:], dtype=y.dtype), 10
    monkeypatch.setattr(Reconstructor, "__call__", diverged)
    config.sampling.output_dir = config.sampling.output_dir + "_diverged"
    summary = reconstruct(config, "unused")
    rows = outputs.read_rows(os.path.join(config.sampling.output_dir, "metrics.csv"))
    assert all(r["flagged"] == 1 and r["residual"] > 2 * r["zf_residual"] + 0.05 for r in rows)
    assert summary["n_flagged"] == 6 and "file1000 slice 0 is flagged: its data residual" in caplog.text
    assert is_flagged(float("nan"), 0.1) and not is_flagged(0.25, 0.1)
