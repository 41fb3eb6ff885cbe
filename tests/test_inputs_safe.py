"""Hostile and clumsy inputs, done for real on small files (issue 18): output folders among the inputs, foreign
result files and temporaries, symlinked locks, damaged trial tables and two tunes at once, bad numbers, files that
are not checkpoints, exports with flipped bytes, non-finite output, headers that claim huge arrays, a full disk or a
file-size limit at every result file and checkpoint, SIGINT/SIGTERM while a checkpoint is written, and our own
files damaged.
Result identity (checkpoint content, data, slices, settings) is tested in tests/test_identity.py."""
from __future__ import annotations

import csv
import errno
import glob
import hashlib
import logging
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import time
import zipfile

import h5py
import numpy as np
import pytest
import torch

from configs.tiny import get_config
from models.ema import ExponentialMovingAverage
from runners import folders, outputs
from runners.build import checkpoint_record, create_model
from runners.export import main as export_main
from runners.reconstruct import reconstruct
from runners.run_folder import META_CHECKPOINT
from runners.train import train
from runners.tune import Tuner, _Trials
from tests.test_reliability import (ROOT, _hold_lock, error_line, sample_command, setup,  # noqa: F401 - fixture
                                    train_command)
from tests.test_tune import tune_config
from utils.atomic import WriteError, write_json
from utils.checkpoints import CheckpointError, read_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _digests(folder: str) -> dict[str, str]:
    """SHA-256 of every file under `folder` by relative path."""
    out = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


# ---- 1. an output folder among the inputs ------------------------------------------------------------------------
def test_output_folder_that_is_contains_or_lies_inside_an_input_is_refused_before_writing(setup, tmp_path):
    config, overrides, folder = setup
    before = _digests(str(tmp_path))
    result = subprocess.run(sample_command(*overrides, f"--config.sampling.output_dir={folder.root}"), cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"sampling.output_dir={folder.root} is the k-space folder {folder.root}" in error_line(result.stderr)
    checkpoint_folder = os.path.dirname(config.sampling.checkpoint)
    cases = {folder.maps_root: "is the coil maps folder", os.path.join(folder.root, "out"): "lies inside the k-space",
             str(tmp_path): "contains the", checkpoint_folder: "is the checkpoint folder",
             config.data.mask_root: "is the mask (data.mask_root) folder"}
    for out, relation in cases.items():
        config.sampling.output_dir = out
        with pytest.raises(folders.FolderError, match=re.escape(f"sampling.output_dir={out} {relation}")):
            reconstruct(config, "unused")
    assert _digests(str(tmp_path)) == before  # nothing written, nothing replaced
    assert not os.path.exists(os.path.join(folder.root, "out"))
    # Below the checkpoint's folder (a checkpoint kept in the working folder) outputs are allowed.
    assert folders.check_not_input(os.path.join(checkpoint_folder, "samples"), "sampling.output_dir",
                                   {checkpoint_folder: "checkpoint"}) is None


def test_symlinked_output_folder_into_the_data_is_refused(setup, tmp_path):
    config, _, folder = setup
    os.symlink(folder.root, tmp_path / "link")
    config.sampling.output_dir = str(tmp_path / "link")
    with pytest.raises(folders.FolderError, match="is the k-space folder"):
        reconstruct(config, "unused")


# ---- 1. files the tool did not write -----------------------------------------------------------------------------
def test_foreign_result_files_stop_the_run_and_user_temporaries_are_kept(setup, tmp_path):
    config, overrides, _ = setup
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in (("metrics.csv", "my,own\n1,2\n"), ("summary.json", "{}"), ("draft.tmp", "my draft")):
        (out / name).write_text(text)
    before = _digests(str(out))
    result = subprocess.run(sample_command(*overrides, f"--config.sampling.output_dir={out}",
                                           "--config.sampling.max_slices=1"), cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    line = error_line(result.stderr)
    assert f"{out} was not made by this tool" in line and "metrics.csv, summary.json" in line
    assert {k: v for k, v in _digests(str(out)).items() if k != ".lock"} == before  # only the lock file is new
    assert sorted(os.listdir(out)) == [".lock", "draft.tmp", "metrics.csv", "summary.json"]

    for name in ("metrics.csv", "summary.json"):
        (out / name).unlink()
    (out / ".metrics.csv.12345.tmp").write_text("our own interrupted write")
    config.sampling.output_dir, config.sampling.max_slices = str(out), 1
    assert reconstruct(config, "unused")["n_slices"] == 1
    assert (out / "draft.tmp").read_text() == "my draft"  # a user's *.tmp file is kept
    assert not (out / ".metrics.csv.12345.tmp").exists()  # our temporary is removed
    assert (out / "setting.json").exists()
    assert reconstruct(config, "unused")["n_slices"] == 1  # the folder is ours now: a rerun reuses it


# ---- 2. a symlinked lock -----------------------------------------------------------------------------------------
def test_symlinked_lock_is_refused_and_its_target_untouched(setup, tmp_path):
    config, overrides, _ = setup
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("do not touch")
    os.symlink(target, out / ".lock")
    result = subprocess.run(sample_command(*overrides), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"{out}/.lock is a symbolic link" in error_line(result.stderr)
    assert target.read_text() == "do not touch"
    (out / ".lock").unlink()
    os.symlink(tmp_path / "nowhere", out / ".lock")  # dangling: no file may be made outside the folder
    with pytest.raises(folders.FolderError, match="is a symbolic link"):
        folders.lock_folder(str(out), "key", "folder")
    assert not (tmp_path / "nowhere").exists()


# ---- 3. trials.csv and two tunes ---------------------------------------------------------------------------------
def test_partial_trial_rows_are_dropped_with_a_warning_and_never_appended_onto(tmp_path, caplog):
    path = tmp_path / "trials.csv"
    header = "snr,mse,psnr,ssim,seconds\n"
    good = ["0.1,1.0,30.5,0.91,2.0\n", "0.2,1.0,31.5,0.92,2.0\n"]
    path.write_text(header + good[0] + "0.4,1.0,-,0.9,1\n" + good[1] + "0.8,1.0,29.")  # cut short: no newline
    with caplog.at_level(logging.WARNING):
        trials = _Trials(str(path), ["snr", "mse"])
    assert sorted(trials.rows) == [("0.1", "1.0"), ("0.2", "1.0")]
    assert f"{path}: dropped 2 damaged or incomplete row(s)" in caplog.text
    trials.add((0.8, 1.0), {"psnr": 29.25, "ssim": 0.9, "seconds": 1.5})
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert [len(r) for r in rows] == [5] * 4 and rows[-1] == ["0.8", "1.0", "29.25", "0.9", "1.5"]
    assert path.read_text().endswith("\n")


def test_a_second_tune_on_one_folder_is_refused_naming_the_holder(tmp_path, monkeypatch):
    axes = [("snr_accelerated", (0.08,), True)]
    first = Tuner(tune_config(), str(tmp_path), "psnr", 1, axes)
    first.lock.release()
    monkeypatch.setattr(folders, "DYING_WAIT_S", 0.5)
    holder, _ = _hold_lock(first.out)
    try:
        with pytest.raises(folders.FolderBusy, match=rf"tune folder {first.out} is being written by process "
                                                     rf"{holder.pid}"):
            Tuner(tune_config(), str(tmp_path), "psnr", 1, axes)
    finally:
        holder.kill()
        holder.wait()


def test_tune_folder_inside_the_validation_data_is_refused(tmp_path):
    config = tune_config()
    with pytest.raises(folders.FolderError, match="--workdir=.* lies inside the k-space folder"):
        Tuner(config, config.data.eval_root, "psnr", 1, [("snr_accelerated", (0.08,), True)])


# ---- 4. every numeric setting checked before any folder is made --------------------------------------------------
BAD_SETTINGS = [
    ({"sampling.N": 0}, "sampling.N=0 is not allowed: at least 1 step"),
    ({"sampling.N": -3, "sampling.method": "ode"}, "sampling.N=-3"),
    ({"sampling.accelerated_sampling": False, "model.num_scales": 0}, "model.num_scales=0"),
    ({"sampling.eps": 2.0}, "sampling.eps=2.0 is not allowed: a number in (0, 1)"),
    ({"sampling.eps": float("nan")}, "sampling.eps=nan"),
    ({"sampling.eps": -1.0}, "sampling.eps=-1.0"),
    ({"sampling.method": "ddim", "sampling.eta": 5.0}, "sampling.eta=5.0 is not allowed: a number in [0, 1]"),
    ({"sampling.method": "ddim", "sampling.eta": -1.0}, "sampling.eta=-1.0"),
    ({"sampling.mse": float("nan")}, "sampling.mse=nan is not allowed: a finite weight ≥ 0"),
    ({"sampling.method": "ode", "sampling.mse": -1.0}, "sampling.mse=-1.0"),
    ({"sampling.corrector_mse": float("inf")}, "sampling.corrector_mse=inf"),
    ({"sampling.n_steps_each": 0}, "sampling.n_steps_each=0"),
    ({"sampling.snr_accelerated": -1.0}, "sampling.snr_accelerated=-1.0 is not allowed: a finite number > 0"),
    ({"sampling.accelerated_sampling": False, "sampling.snr": 0.0}, "sampling.snr=0.0"),
    ({"sampling.dc_lambda": -1.0, "sampling.final_dc": "cg"}, "sampling.dc_lambda=-1.0 is not allowed: a finite"),
    ({"sampling.method": "ddim", "sampling.dc_iters": -1}, "sampling.dc_iters=-1 is not allowed"),
    ({"sampling.dc_scale": 0.0}, "sampling.dc_scale=0.0"),
    ({"sampling.discrepancy": -1.0}, "sampling.discrepancy=-1.0"),
    ({"sampling.method": "l1wavelet", "sampling.l1_lambda": float("nan")}, "sampling.l1_lambda must be a finite"),
    ({"data.normalize_coeff": 0.0}, "data.normalize_coeff=0.0 is not allowed: a finite number > 0"),
]


@pytest.mark.parametrize("values, message", BAD_SETTINGS, ids=[m.split(" ")[0] for _, m in BAD_SETTINGS])
def test_bad_numbers_are_one_line_naming_the_key_before_any_folder(setup, values, message):
    config, _, _ = setup
    for key, value in values.items():
        group, name = key.split(".")
        config[group][name] = value
    with pytest.raises(ValueError) as err:
        reconstruct(config, "unused")
    text = str(err.value)
    assert message in text and "\n" not in text
    assert "final_dc" not in text and "cg_iters" not in text  # keys the user did not set are not blamed
    assert not os.path.exists(config.sampling.output_dir)


def test_bad_number_through_main_is_one_line(setup):
    _, overrides, _ = setup
    result = subprocess.run(sample_command(*overrides, "--config.sampling.eps=nan"), cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "sampling.eps=nan is not allowed" in error_line(result.stderr)
    assert not os.path.exists(dict(o[len("--config."):].split("=", 1) for o in overrides)["sampling.output_dir"])


def test_nothing_to_train_is_one_line_and_makes_no_run(phantom, tmp_path):
    config = get_config()
    config.data.root, config.data.eval_root = f"{phantom}/train", f"{phantom}/val"
    config.training.n_iters, config.training.epochs = -1, 0
    with pytest.raises(SystemExit, match="training.n_iters=-1 and training.epochs=0 leave nothing to train"):
        train(config, str(tmp_path / "runs"))
    assert not os.path.exists(tmp_path / "runs")


# ---- 5. checkpoints that are not, and output that is not finite --------------------------------------------------
def test_text_file_as_checkpoint_is_one_line(setup, tmp_path):
    config, _, _ = setup
    config.sampling.checkpoint = str(tmp_path / "notes.pth")
    for text in ("these are my notes, not weights\n" * 20, "hello\n"):  # torch.load raises IndexError, KeyError
        (tmp_path / "notes.pth").write_text(text)
        with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*notes.pth \(truncated, corrupt, or not a "
                                                  r"weights-only PyTorch file\)"):
            reconstruct(config, "unused")


def test_non_finite_output_exits_non_zero_in_one_line_whatever_it_wrote(setup, tmp_path):
    config, overrides, _ = setup
    model = create_model(get_config())
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    path = str(tmp_path / "ckpt" / "nan.pth")
    save_checkpoint(path, {"model": model, "ema": ExponentialMovingAverage(model.parameters(), 0.99), "step": 5,
                           "config": checkpoint_record(get_config())})
    command = sample_command(*overrides, f"--config.sampling.checkpoint={path}", "--config.sampling.max_slices=2")
    for _ in range(2):  # the rerun finds the written slices and still fails
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode != 0
        line = error_line(result.stderr)
        assert "2 of 2 reconstructed slices in" in line and "are not finite (file1000 slice 0, file1000 slice 1)" in line
    assert os.path.exists(os.path.join(config.sampling.output_dir, "summary.json"))


def _flip_bytes_inside_the_largest_tensor(path: str, count: int = 4096) -> None:
    """Invert `count` bytes in the middle of the largest tensor record of a PyTorch zip file (records are stored
    uncompressed, so the file still unpickles)."""
    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(record.header_offset + 26)  # the local header's name and extra-field lengths
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        start = record.header_offset + 30 + name_length + extra_length + (record.file_size - count) // 2
        f.seek(start)
        data = f.read(count)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in data))


def test_exported_checkpoint_with_flipped_weight_bytes_is_one_line_and_older_exports_load(setup, tmp_path):
    config, _, _ = setup
    exported = str(tmp_path / "exported" / "tiny.pth")
    assert export_main([config.sampling.checkpoint, exported]) == 0
    intact = torch.load(exported, weights_only=True)
    _flip_bytes_inside_the_largest_tensor(exported)
    damaged = torch.load(exported, weights_only=True)  # still a valid file: only the recorded hash tells
    assert any(not torch.equal(damaged["model"][k], v) for k, v in intact["model"].items())
    config.sampling.checkpoint = exported
    with pytest.raises(CheckpointError) as err:
        reconstruct(config, "unused")
    assert str(err.value) == (f"checkpoint {exported} is damaged: its weights do not match the SHA-256 recorded when "
                              f"it was exported; download it again, or export it again with `python -m runners.export "
                              f"<training checkpoint> {exported}`")
    assert not os.path.exists(config.sampling.output_dir)

    del intact["weights_sha256"]  # an export written before the hash was recorded
    torch.save(intact, exported)
    assert reconstruct(config, "unused")["n_slices"] == 6
    for name in ("hfssde_phantom_demo.pth", "vpsde_brain_demo.pth"):  # the committed exports have no hash
        assert "weights_sha256" not in read_checkpoint(os.path.join(ROOT, "demo", name), "cpu")


# ---- 6. headers that claim too much ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, claim", [((1000, 64, 4000, 4000), "1000 slices of 7.63 GiB"),
                                          ((10**9, 4, 32, 32), "1000000000 slices of 3.05e-05 GiB")])
def test_header_claiming_a_huge_array_is_one_line_before_allocation(setup, shape, claim):
    config, _, folder = setup
    path = os.path.join(folder.root, "file1001.h5")
    with h5py.File(path, "w") as f:  # only the header: the chunks are never written
        f.create_dataset("kspace", shape=shape, dtype=np.complex64, chunks=(1, 1, 32, 32))
    assert os.path.getsize(path) < 1 << 20
    with pytest.raises(ValueError, match=re.escape(f"{path}: 'kspace' claims shape {list(shape)} ({claim}); at "
                                                   f"most 10000 slices of at most 2 GiB are read")):
        reconstruct(config, "unused")
    assert not os.path.exists(config.sampling.output_dir)


# ---- 7. a full disk during a training checkpoint -----------------------------------------------------------------
def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow  # two training processes (~40 s on a loaded CPU)
def test_full_disk_during_a_training_checkpoint_is_one_line_naming_the_path(phantom, tmp_path):
    command = train_command(str(tmp_path / "runs"), phantom, "--config.training.n_iters=1")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            preexec_fn=_file_size_limit(1 << 20))
    assert result.returncode != 0
    line = error_line(result.stderr)
    assert re.search(r"cannot write \S+/checkpoint\S*\.pth: File too large; the disk is full", line), line
    [run_dir] = glob.glob(str(tmp_path / "runs" / "*"))
    assert not glob.glob(os.path.join(run_dir, "*", "*.pth"))  # nothing half-written is left as a checkpoint
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(os.path.join(run_dir, "finished"))


def _in_child_with_file_size_limit(limit: int, write) -> str:
    """Run `write()` in a forked child whose files may not grow past `limit` bytes (the kernel refuses the write
    with EFBIG); returns the child's error as `Type: message`, or "" when it wrote."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            write()
            text = ""
        except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
            text = f"{type(err).__name__}: {err}"
        os.write(write_end, text.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        text = f.read().decode()
    os.waitpid(pid, 0)
    return text


ROW = {"fname": "file1000", "slice": 0, **{k: 0.5 for k in outputs.FIELDS[2:]}, "flagged": 0, "nfe": 3}
IMAGE = np.random.default_rng(0).standard_normal((32, 32)) + 1j * np.random.default_rng(1).standard_normal((32, 32))


def _writers(out: str) -> dict:
    """`{file name: write}` for each result file of a reconstruction and a tune, written into `out` (which holds
    an earlier version of each)."""
    trials = lambda: _Trials(os.path.join(out, "trials.csv"), ["snr"])  # noqa: E731
    return {
        "recon_file1000_0.mat": lambda: outputs.write_slice(out, "file1000", 0, IMAGE, IMAGE, IMAGE, ROW, "t"),
        "metrics.csv": lambda: outputs.SliceRecords(out).add({**ROW, "slice": 1}),
        "file1000.h5": lambda: outputs.write_volumes(out, [ROW]),
        "summary.json": lambda: write_json(os.path.join(out, "summary.json"), {"rows": [ROW] * 20}),
        "trials.csv": lambda: trials().add((0.2,), {"psnr": 30.0, "ssim": 0.9, "seconds": 1.0}),
        "best.json": lambda: write_json(os.path.join(out, "best.json"), {"sampling": {"snr": 0.2}, "rows": [ROW] * 20}),
    }


def test_a_file_size_limit_at_any_result_file_is_one_line_naming_it_and_keeps_the_old_version(tmp_path):
    out = str(tmp_path)
    writers = _writers(out)
    for write in writers.values():  # earlier versions, written without a limit
        write()
    before = _digests(out)
    for name, write in writers.items():
        text = _in_child_with_file_size_limit(32, write)
        assert text == (f"WriteError: cannot write {os.path.join(out, name)}: File too large; the disk is full or a "
                        f"file-size limit was reached: free space (or raise the limit) and rerun (the previous version "
                        f"is kept)"), name
        assert _digests(out) == before, name  # no part under the final name, no temporary left


def test_a_full_disk_at_fsync_is_one_line_naming_the_file_and_the_rerun_completes(setup, monkeypatch):
    config, _, _ = setup
    config.sampling.max_slices = 1
    fsync = os.fsync

    def no_space_for(name: str):
        def refuse(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(os.path.join(config.sampling.output_dir, f".{name}.")):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            fsync(fd)
        return refuse

    for name in ("metrics.csv", "volumes.csv", "summary.json"):  # each fails in a run that got past the one before
        monkeypatch.setattr(os, "fsync", no_space_for(name))
        with pytest.raises(WriteError, match=re.escape(f"cannot write {config.sampling.output_dir}/{name}: No space "
                                                       f"left on device; the disk is full")):
            reconstruct(config, "unused")
        assert not os.path.exists(os.path.join(config.sampling.output_dir, name))
        assert not glob.glob(os.path.join(config.sampling.output_dir, "*.tmp"))
        assert not glob.glob(os.path.join(config.sampling.output_dir, ".*.tmp"))
    monkeypatch.setattr(os, "fsync", fsync)
    assert reconstruct(config, "unused")["n_slices"] == 1


def test_a_file_size_limit_through_main_is_one_line_and_leaves_no_part(setup):
    _, overrides, _ = setup
    result = subprocess.run(sample_command(*overrides, "--config.sampling.max_slices=1"), cwd=ROOT,
                            capture_output=True, text=True, timeout=120, preexec_fn=_file_size_limit(8192))
    assert result.returncode != 0
    out = dict(o[len("--config."):].split("=", 1) for o in overrides)["sampling.output_dir"]
    assert error_line(result.stderr) == (f"main.py: error: cannot write {out}/recon_file1000_0.mat: File too large; "
                                         f"the disk is full or a file-size limit was reached: free space (or raise "
                                         f"the limit) and rerun (the previous version is kept)")
    assert sorted(os.listdir(out)) == [".lock", "setting.json"]


# ---- 8. SIGINT / SIGTERM while a training checkpoint is written --------------------------------------------------
def _tiny_run(phantom: str):
    config = get_config()
    config.data.root, config.data.eval_root = f"{phantom}/train", f"{phantom}/val"
    config.training.n_iters, config.training.snapshot_freq_for_preemption = 4, 1  # a checkpoint at every step
    return config


def _check_stopped_at_step_2_then_resumed(phantom: str, workdir, message: str, signum: int, caplog) -> None:
    """The run stopped with one line after completing its step-2 checkpoint, and the same command resumes it."""
    [run_dir] = glob.glob(str(workdir / "*"))
    meta = os.path.join(run_dir, META_CHECKPOINT)
    assert message == (f"train: stopped by {signal.Signals(signum).name} at step 2; the last good checkpoint is {meta} "
                       f"(step 2): rerun the same command (or --workdir {run_dir}) to resume")
    assert torch.load(meta, weights_only=True)["step"] == 2  # the checkpoint being written was completed
    assert os.listdir(os.path.dirname(meta)) == ["checkpoint.pth"]  # and no temporary is left
    with caplog.at_level(logging.INFO):
        assert train(_tiny_run(phantom), str(workdir)) == run_dir
    assert f"resumed from {meta} at step 2 " in caplog.text
    assert torch.load(meta, weights_only=True)["step"] == 4


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_a_checkpoint_is_written_completes_it_in_one_line_and_the_rerun_resumes(phantom, tmp_path,
                                                                                                  monkeypatch, caplog,
                                                                                                  signum):
    save = torch.save

    def signalled_save(obj, f, *args, **kwargs):  # the signal comes in the middle of the step-2 save
        save(obj, f, *args, **kwargs)
        if obj["step"] == 2:
            os.kill(os.getpid(), signum)
            monkeypatch.setattr(torch, "save", save)

    monkeypatch.setattr(torch, "save", signalled_save)
    with pytest.raises(SystemExit) as stop:
        train(_tiny_run(phantom), str(tmp_path / "runs"))
    _check_stopped_at_step_2_then_resumed(phantom, tmp_path / "runs", str(stop.value), signum, caplog)


SLOW_SECOND_SAVE = """
import os, runpy, sys, time
import torch
marker, sys.argv = sys.argv[1], ["main.py"] + sys.argv[2:]
save = torch.save
def slow_save(obj, f, *args, **kwargs):  # the step-2 save waits, written but not yet renamed, for the signal
    save(obj, f, *args, **kwargs)
    if obj["step"] == 2 and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(2.0)
torch.save = slow_save
runpy.run_path("main.py", run_name="__main__")
"""


@pytest.mark.slow  # a training process and its rerun (~30 s on a loaded CPU); the same in-process test runs always
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_from_outside_while_main_writes_a_checkpoint_is_one_line_and_the_rerun_resumes(phantom, tmp_path,
                                                                                                  caplog, signum):
    workdir, marker = tmp_path / "runs", tmp_path / "saving"
    command = [sys.executable, "-c", SLOW_SECOND_SAVE, str(marker)] + train_command(
        str(workdir), phantom, "--config.training.n_iters=4", "--config.training.snapshot_freq_for_preemption=1")[2:]
    run = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert run.poll() is None and time.time() < deadline, "the step-2 checkpoint was never written"
            time.sleep(0.02)
        run.send_signal(signum)
        stderr = run.communicate(timeout=60)[1]
    finally:
        run.kill()
    assert run.returncode == 1 and "Traceback" not in stderr
    _check_stopped_at_step_2_then_resumed(phantom, workdir, stderr.strip().splitlines()[-1], signum, caplog)


# ---- 9. our own files damaged, and odd values in them (probes beyond the list) ----------------------------
@pytest.mark.parametrize("text", ['{"identity": "x", "fie', "[1, 2]", '{"fields": 3}', "\udcff"])
def test_a_damaged_setting_json_is_one_line_naming_it(setup, text):
    config, _, _ = setup
    out = config.sampling.output_dir
    os.makedirs(out)
    with open(os.path.join(out, "setting.json"), "w", errors="surrogateescape") as f:
        f.write(text)
    with pytest.raises(ValueError) as err:
        reconstruct(config, "unused")
    assert str(err.value) == (f"{out}/setting.json is damaged (not the setting.json this tool writes), so the results "
                              f"in {out} cannot be matched to this run; give a new sampling.output_dir or delete the "
                              f"folder to redo it")


def test_damaged_rows_of_metrics_csv_are_dropped_with_a_warning_and_redone(setup, caplog):
    config, _, _ = setup
    config.sampling.max_slices = 2
    reconstruct(config, "unused")
    path = os.path.join(config.sampling.output_dir, "metrics.csv")
    with open(path) as f:
        header, first, second = f.read().splitlines()
    for damaged in (f"{header}\n{first.replace(',', ',abc,', 1)}\n{second}\n".encode(), bytes(range(256)) * 4):
        with open(path, "wb") as f:
            f.write(damaged)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert reconstruct(config, "unused")["n_slices"] == 2
        assert f"{path}: dropped" in caplog.text and "those slices are reconstructed again" in caplog.text
        assert [(r["fname"], r["slice"]) for r in outputs.read_rows(path)] == [("file1000", 0), ("file1000", 1)]


def test_a_trial_table_of_binary_garbage_is_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "trials.csv"
    path.write_bytes(bytes(range(256)) * 4)
    with caplog.at_level(logging.WARNING):
        assert _Trials(str(path), ["snr", "mse"]).rows == {}
    assert f"{path}: dropped" in caplog.text and "those trials are run again" in caplog.text


@pytest.mark.parametrize("text, message", [
    ('{"sampling": {"snr_accelerated": "abc"}}', " sets sampling.snr_accelerated='abc', not a float; use a best.json"),
    ('{"sampling": 5}', ": not a readable best.json of `main.py --mode tune`"),
    ("[1]", ": not a readable best.json of `main.py --mode tune`"),
])
def test_a_tuned_file_with_values_of_the_wrong_type_is_one_line(setup, tmp_path, text, message):
    config, _, _ = setup
    path = tmp_path / "best.json"
    path.write_text(text)
    config.sampling.tuned = str(path)
    with pytest.raises(ValueError, match=re.escape(f"sampling.tuned={path}{message}")):
        reconstruct(config, "unused")
    assert not os.path.exists(config.sampling.output_dir)


def test_a_folder_in_the_place_of_a_result_file_is_named_not_its_temporary(setup):
    config, _, _ = setup
    config.sampling.max_slices = 1
    reconstruct(config, "unused")
    summary = os.path.join(config.sampling.output_dir, "summary.json")
    os.remove(summary)
    os.makedirs(summary)
    with pytest.raises(WriteError, match=re.escape(f"cannot write {config.sampling.output_dir}/summary.json: Is a "
                                                   f"directory; check the path and its permissions")):
        reconstruct(config, "unused")


# ---- issue 18 items 4-5: results never mix models, data or slices (runners/identity.py) ---------------------------
def test_a_checkpoint_replaced_at_the_same_path_never_merges_into_the_old_folder(setup):
    config, _, _ = setup
    config.sampling.max_slices = 1
    reconstruct(config, "unused")
    before = _digests(config.sampling.output_dir)
    save_checkpoint(config.sampling.checkpoint, {"model": create_model(config), "step": 20})  # new weights, same name
    with pytest.raises(ValueError, match=r"holds reconstructions of another setting \(differs in checkpoint\)"):
        reconstruct(config, "unused")
    assert _digests(config.sampling.output_dir) == before


def test_tune_tables_differ_for_another_checkpoint_of_the_same_name_and_other_slices(tmp_path):
    axes = [("snr_accelerated", (0.08,), True)]
    config = tune_config()
    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
        state = torch.load(config.sampling.checkpoint, weights_only=True)
        state["step"] = 1 if name == "a" else 2  # other content under the same base name
        torch.save(state, tmp_path / name / "checkpoint.pth")
    outs = []
    for name, slices in (("a", 1), ("b", 1), ("a", 2)):
        config.sampling.checkpoint = str(tmp_path / name / "checkpoint.pth")
        tuner = Tuner(config, str(tmp_path / "work"), "psnr", slices, axes)
        tuner.lock.release()
        outs.append(tuner.out)
    assert len(set(outs)) == 3
