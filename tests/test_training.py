"""Training end to end on CPU with the tiny config and a small phantom set: loss, resume, torchrun, TensorBoard,
run folders and one-line errors for bad input."""
from __future__ import annotations

import errno
import glob
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.summary.writer.record_writer import RecordWriter

import losses
from configs.tiny import get_config
from runners import run_logs
from runners.run_folder import META_CHECKPOINT
from runners.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALARS = {"train/loss", "train/lr", "train/grad_norm", "train/images_per_s", "eval/loss"}


pytestmark = pytest.mark.usefixtures("one_thread")


def data_args(phantom: str) -> list[str]:
    return [f"--config.data.root={phantom}/train", f"--config.data.eval_root={phantom}/val"]


def tiny(phantom: str, **overrides):
    """The tiny config on the phantom set; `overrides` as `group__key=value`."""
    config = get_config()
    config.data.root, config.data.eval_root = f"{phantom}/train", f"{phantom}/val"
    for name, value in overrides.items():
        group, key = name.split("__")
        setattr(getattr(config, group), key, value)
    return config


def main_py(workdir: str, *args: str) -> list[str]:
    return [sys.executable, "main.py", "--mode", "train", "--config", "configs/tiny.py", "--workdir", workdir, *args]


def run_dirs(parent) -> list[str]:
    return sorted(d for d in glob.glob(os.path.join(str(parent), "*")) if os.path.isdir(d))


def load(run_dir: str, name: str = META_CHECKPOINT) -> dict:
    return torch.load(os.path.join(run_dir, name), map_location="cpu", weights_only=True)


def scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(os.path.join(run_dir, "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_loss_falls_and_tensorboard_holds_the_scalars(phantom, tmp_path):
    (tmp_path / "notes.txt").write_text("not ours")
    config = tiny(phantom, training__n_iters=200, training__log_freq=10, training__eval_freq=50,
                  training__snapshot_freq=60, training__epoch_snapshot_freq=20, training__snapshot_sampling=True)
    run_dir = train(config, str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "not ours"
    assert os.path.basename(run_dir).endswith("_ddpm_hfssde_low_frequency_4_std_20.0_N_1000")
    values = scalars(run_dir)
    assert SCALARS | {"eval/reconstruction_psnr"} <= set(values)
    assert [s for s, _ in values["train/loss"]] == list(range(10, 201, 10))
    assert [s for s, _ in values["eval/loss"]] == [50, 100, 150, 200]
    loss = [v for _, v in values["train/loss"]]
    assert sum(loss[-5:]) / 5 < 0.5 * sum(loss[:2]) / 2, loss
    assert values["eval/loss"][-1][1] < values["eval/loss"][0][1]
    assert all(v > 0 for _, v in values["train/images_per_s"])
    events = EventAccumulator(os.path.join(run_dir, "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    # 6 steps per epoch: epoch 20 ends at step 120, with a step snapshot; one reconstruction per snapshot step.
    assert [e.step for e in events.Images("eval/reconstruction")] == [60, 120, 180]
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == [
        "checkpoint_20.pth", "checkpoint_step_120.pth", "checkpoint_step_180.pth", "checkpoint_step_60.pth"]
    assert load(run_dir)["step"] == 200


class _FullDisk:
    """A file whose writes fail as on a full disk."""

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass

    def close(self):
        pass


def test_full_disk_under_the_logs_warns_once_each_and_training_goes_on(phantom, tmp_path, monkeypatch, caplog,
                                                                       capfd):
    monkeypatch.setattr(RecordWriter, "write", _FullDisk.write)
    monkeypatch.setattr(run_logs._LogFile, "_open", lambda self: _FullDisk())
    hook = threading.excepthook
    config = tiny(phantom, training__n_iters=30, training__log_freq=5, training__eval_freq=10)
    with caplog.at_level(logging.INFO):
        run_dir = train(config, str(tmp_path))
    assert load(run_dir)["step"] == 30 and threading.excepthook is hook
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2, warned
    assert any(m.startswith("cannot write the TensorBoard events in ") and "No space left" in m for m in warned)
    assert any(m.startswith("cannot write the log file ") and "train.log (No space left" in m for m in warned)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err, err


def test_only_the_last_epoch_checkpoints_and_the_kept_ones_stay(phantom, tmp_path):
    config = tiny(phantom, training__batch_size=6, training__n_iters=10, training__epoch_snapshot_freq=1,
                  training__keep_epoch_checkpoints=2, training__keep_epochs=(2,), training__eval_freq=0,
                  training__snapshot_freq=0)
    run_dir = train(config, str(tmp_path))  # 2 steps per epoch: 5 epochs
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == [
        "checkpoint_2.pth", "checkpoint_4.pth", "checkpoint_5.pth"]


def test_resumed_run_equals_uninterrupted_run(phantom, tmp_path):
    """Stop at step 11 (mid-epoch: 6 steps per epoch), resume to 20; compare with 20 steps in one go."""
    common = dict(training__snapshot_freq_for_preemption=4, training__eval_freq=5, model__dropout=0.1)
    whole = train(tiny(phantom, training__n_iters=20, **common), str(tmp_path / "whole"))
    part = train(tiny(phantom, training__n_iters=11, **common), str(tmp_path / "part"))
    assert load(part)["step"] == 11 and (load(part)["epoch"], load(part)["batch_in_epoch"]) == (1, 5)
    assert train(tiny(phantom, training__n_iters=20, **common), part) == part
    a, b = load(whole), load(part)
    assert a["step"] == b["step"] == 20 and a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(x["exp_avg_sq"], y["exp_avg_sq"], rtol=0, atol=0)
    assert scalars(whole)["eval/loss"][-1] == pytest.approx(scalars(part)["eval/loss"][-1], abs=1e-6)


def test_run_killed_with_sigkill_resumes_with_the_same_command(phantom, tmp_path):
    command = main_py(str(tmp_path), *data_args(phantom), "--config.training.n_iters=100",
                      "--config.training.snapshot_freq_for_preemption=20")
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not glob.glob(str(tmp_path / "*" / META_CHECKPOINT)):
            assert first.poll() is None and time.time() < deadline, "no pre-emption checkpoint was written"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait()
    [run_dir] = run_dirs(tmp_path)
    kept = load(run_dir)["step"]
    assert 0 < kept < 100 and kept % 20 == 0 and not os.path.exists(os.path.join(run_dir, "finished"))
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert run_dirs(tmp_path) == [run_dir]
    assert f"at step {kept} " in second.stderr
    assert load(run_dir)["step"] == 100 and os.path.exists(os.path.join(run_dir, "finished"))
    # TensorBoard hides what the killed process logged after its last checkpoint: every step is there once.
    assert [s for s, _ in scalars(run_dir)["train/loss"]] == list(range(5, 101, 5))


def test_torchrun_two_processes(phantom, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "main.py",
               *main_py(str(tmp_path), *data_args(phantom), "--config.training.n_iters=6",
                        "--config.training.log_freq=2", "--config.training.eval_freq=3")[2:]]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "all 2 ranks hold identical parameters at step 6" in result.stderr
    [run_dir] = run_dirs(tmp_path)
    assert glob.glob(os.path.join(run_dir, "checkpoints-meta", "*")) == [os.path.join(run_dir, META_CHECKPOINT)]
    assert len(glob.glob(os.path.join(run_dir, "tensorboard", "*"))) == 1
    assert load(run_dir)["step"] == 6 and len(load(run_dir)["rng"]) == 2
    assert SCALARS <= set(scalars(run_dir))


def test_finished_run_is_kept_and_a_new_one_started(phantom, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "result.txt").write_text("keep")
    first = train(tiny(phantom, training__n_iters=3), str(tmp_path))
    second = train(tiny(phantom, training__n_iters=3), str(tmp_path))
    assert first != second and os.path.exists(os.path.join(first, "finished"))
    assert (tmp_path / "other" / "result.txt").read_text() == "keep"
    assert len(run_dirs(tmp_path)) == 3


def test_resume_with_another_network_is_refused_and_the_run_kept(phantom, tmp_path):
    run_dir = train(tiny(phantom, training__n_iters=2), str(tmp_path))
    saved = open(os.path.join(run_dir, "config.json")).read()
    with pytest.raises(SystemExit, match=r"(?s)cannot resume the run in .*check model.nf"):
        train(tiny(phantom, training__n_iters=4, model__nf=64), run_dir)
    assert open(os.path.join(run_dir, "config.json")).read() == saved
    assert load(run_dir)["step"] == 2


def test_non_finite_loss_stops_and_names_the_last_good_checkpoint(phantom, tmp_path, monkeypatch):
    real = losses.get_step_fn

    def failing_step_fn(sde, train_, *args, **kwargs):
        step_fn = real(sde, train_, *args, **kwargs)

        def step(state, batch):
            if train_ and state["step"] == 7:
                raise losses.NonFiniteLossError("the training loss became nan at step 7")
            return step_fn(state, batch)
        return step

    monkeypatch.setattr(losses, "get_step_fn", failing_step_fn)
    with pytest.raises(SystemExit, match=r"at step 7; .*checkpoints-meta/checkpoint.pth \(step 5\)") as err:
        train(tiny(phantom, training__n_iters=20, training__snapshot_freq_for_preemption=5), str(tmp_path))
    [run_dir] = run_dirs(tmp_path)
    assert run_dir in str(err.value)
    assert load(run_dir)["step"] == 5 and not os.path.exists(os.path.join(run_dir, "finished"))


def test_init_checkpoint_starts_a_new_run_from_the_ema_weights(phantom, tmp_path):
    source = train(tiny(phantom, training__n_iters=3, training__eval_freq=0), str(tmp_path / "a"))
    ema = load(source)["ema"]["shadow_params"]
    run = train(tiny(phantom, training__n_iters=1, training__eval_freq=0, optim__lr=0.0,
                     training__init_checkpoint=os.path.join(source, META_CHECKPOINT)), str(tmp_path / "b"))
    state = load(run)  # one step at learning rate 0 leaves the weights as loaded
    assert state["step"] == 1
    params = [v for k, v in state["model"].items() if not k.endswith("sigmas")]
    for param, shadow in zip(params, ema):
        torch.testing.assert_close(param, shadow, rtol=0, atol=0)
    with pytest.raises(SystemExit, match="training.init_checkpoint=/no/file.pth does not exist"):
        train(tiny(phantom, training__n_iters=1, training__init_checkpoint="/no/file.pth"), str(tmp_path / "c"))


@pytest.mark.parametrize("override, message", [
    ("--config.data.root=/no/such/folder", "k-space folder /no/such/folder does not exist"),
    ("--config.training.batch_size=64", "training.batch_size=64 is larger than the 12 training slices"),
    ("--config.optim.optimizer=SGD", "unknown optim.optimizer 'SGD'"),
    ("--config.training.sde=foo", "unknown training.sde 'foo'"),
    ("--config.training.bogus=1", "unknown config key"),
])
def test_bad_input_gives_one_clear_line(phantom, tmp_path, override, message):
    result = subprocess.run(main_py(str(tmp_path / "runs"), *data_args(phantom), override), cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[0]
    assert not os.path.exists(tmp_path / "runs") or not os.listdir(tmp_path / "runs")


@pytest.mark.parametrize("text, message", [
    (None, "main.py: config file {} does not exist; give a file of configs/"),
    ("def get_config(:\n", "main.py: config file {}, line 1: invalid syntax; fix the file"),
    ("def get_config():\n    return 1 / 0\n", "main.py: config file {}, line 2: ZeroDivisionError: division by zero"),
])
def test_a_missing_or_broken_config_file_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "config.py"
    if text is not None:
        path.write_text(text)
    result = subprocess.run([sys.executable, "main.py", "--mode", "train", "--config", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message.format(path))


def test_unknown_config_key_is_named(phantom, tmp_path):
    result = subprocess.run(main_py(str(tmp_path), *data_args(phantom), "--config.training.bogus=1"), cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert "training.bogus" in result.stderr


def test_workdir_that_is_a_file_is_refused(phantom, tmp_path):
    path = tmp_path / "results"
    path.write_text("not a folder")
    with pytest.raises(SystemExit, match="is a file"):
        train(tiny(phantom, training__n_iters=1), str(path))
    assert path.read_text() == "not a folder"


def test_train_script_usage_and_passthrough(tmp_path):
    bad = subprocess.run(["bash", "train_fastMRI.sh", "ncsnpp"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "usage: bash train_fastMRI.sh hfssde|vp|ve" in bad.stderr
    passed = subprocess.run(["bash", "train_fastMRI.sh", "vpsde", "--config.training.bogus=1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, env=dict(os.environ, NPROC="1"))
    assert passed.returncode != 0 and "unknown config key in --config.training.bogus" in passed.stderr
