"""Run folders of training (`--workdir`): naming, finding the run to resume, locking, the saved config.

Run folders
    `--workdir` is a folder of runs (default `results`) or one run folder. A new run gets
    `<workdir>/<YYYY_MM_DDTHH_MM_SS>_<model>_<sde>_<mask_type>_<acs>_<normalize_type>_<beta_max>_N_<num_scales>`
    (HFS-SDE) or `<workdir>/<timestamp>_<model>_<sde>_N_<num_scales>` (VP/VE), the published names. A run folder
    is recognised by its `config.json` (or a published `checkpoints-meta/checkpoint.pth`). Training resumes
        * the run folder named by `--workdir`, or
        * the newest unfinished run in `--workdir` whose `config.json` equals the current config, so a preempted
          job restarted with the same command continues where it stopped.
    A run in use by another process is never touched (a lock file held while training), and no existing file
    that is not ours is overwritten.

Files of a run
    config.json                            the resolved config (rewritten, with a warning, when a resume changes it)
    train.log                              the log
    tensorboard/                           scalars train/{loss, lr, grad_norm, images_per_s} every
                                           `training.log_freq` steps, eval/loss (EMA weights, held-out batch, fixed
                                           noise) every `training.eval_freq`, and with `training.snapshot_sampling`
                                           a reconstruction of one validation slice at every snapshot
    checkpoints/checkpoint_{epoch}.pth     every `training.epoch_snapshot_freq` epochs (epochs counted from 1)
    checkpoints/checkpoint_step_{step}.pth every `training.snapshot_freq` steps
    checkpoints-meta/checkpoint.pth        every `training.snapshot_freq_for_preemption` steps, with every other
                                           checkpoint and at the end; training resumes from it
    finished                               written when training has reached its last step
    Checkpoints hold `{model, ema, optimizer, step}` (published format) plus `epoch`, `batch_in_epoch` and the
    RNG states of every rank, so a resumed run continues exactly as an uninterrupted one. A frequency ≤ 0 turns
    the corresponding action off.
"""
from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import logging
import os

try:  # POSIX: a run folder is locked while it trains.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

CONFIG_FILE = "config.json"
FINISHED_FILE = "finished"
LOCK_FILE = ".lock"
META_CHECKPOINT = os.path.join("checkpoints-meta", "checkpoint.pth")


def run_name(config, now: datetime.datetime | None = None) -> str:
    """The published run-folder name, e.g. `2023_10_07T20_39_52_ddpm_hfssde_low_frequency_16_std_20.0_N_1000`."""
    stamp = "{0:%Y_%m_%dT%H_%M_%S}".format(now or datetime.datetime.now())
    parts = [stamp, config.model.name, config.training.sde]
    if config.training.sde.lower() == "hfssde":
        parts += [config.training.mask_type, str(config.training.acs), config.data.normalize_type,
                  str(config.model.beta_max)]
    return "_".join(parts + ["N", str(config.model.num_scales)])


def is_run_dir(path: str) -> bool:
    """Whether `path` is a run folder (our `config.json`, or a published `checkpoints-meta/checkpoint.pth`)."""
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) or os.path.isfile(os.path.join(path, META_CHECKPOINT))


def config_dict(config) -> dict:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def _saved_config(run_dir: str) -> dict | None:
    """The run's `config.json` as a dict (None when missing or unreadable)."""
    try:
        with open(os.path.join(run_dir, CONFIG_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _lock(run_dir: str):
    """Lock `run_dir` for this process (released when the file closes or the process dies); None if in use."""
    handle = open(os.path.join(run_dir, LOCK_FILE), "a")
    if fcntl is None:
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _unfinished_run(config, parent: str, stack: contextlib.ExitStack) -> str | None:
    """The newest unfinished, unlocked run in `parent` trained with exactly `config` (locked for us), if any."""
    wanted = config_dict(config)
    for name in sorted(os.listdir(parent), reverse=True):
        run_dir = os.path.join(parent, name)
        if (os.path.isdir(run_dir) and not os.path.exists(os.path.join(run_dir, FINISHED_FILE))
                and _saved_config(run_dir) == wanted):
            handle = _lock(run_dir)
            if handle is not None:
                stack.enter_context(handle)
                return run_dir
    return None


def _new_run(config, parent: str, stack: contextlib.ExitStack) -> str:
    """Create and lock a fresh run folder in `parent` (a numbered suffix if the name is taken)."""
    base = os.path.join(parent, run_name(config))
    for n in itertools.count():
        run_dir = base if n == 0 else f"{base}_{n}"
        try:
            os.makedirs(run_dir)
        except FileExistsError:
            continue
        stack.enter_context(_lock(run_dir))
        return run_dir


def open_run(config, workdir: str, stack: contextlib.ExitStack) -> str:
    """The run folder to train in (see the module docstring), locked for this process."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"--workdir {workdir} is a file; give a folder of runs (e.g. results) or a run folder")
    if is_run_dir(workdir):
        handle = _lock(workdir)
        if handle is None:
            raise ValueError(f"run folder {workdir} is being trained by another process ({LOCK_FILE} is locked); "
                             "wait for it to end or pass another --workdir")
        run_dir = workdir
        stack.enter_context(handle)
    else:
        os.makedirs(workdir, exist_ok=True)
        run_dir = _unfinished_run(config, workdir, stack) or _new_run(config, workdir, stack)
    _warn_config_changes(config, run_dir)
    return run_dir


def _warn_config_changes(config, run_dir: str) -> None:
    """Warn about the config keys that differ from the run's `config.json` (a resume with other settings)."""
    old, new = _saved_config(run_dir), config_dict(config)
    if old is not None and old != new:
        changed = [f"{g}.{k}: {old.get(g, {}).get(k)!r} -> {v!r}" for g, group in new.items()
                   if isinstance(group, dict) for k, v in group.items() if old.get(g, {}).get(k) != v]
        changed += [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if not isinstance(v, dict)
                    and old.get(k) != v]
        logging.warning("resuming %s with a changed config: %s", run_dir, "; ".join(changed))


def save_config(config, run_dir: str) -> None:
    """Write the resolved config to the run's `config.json` (atomically)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    with open(path + ".tmp", "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(path + ".tmp", path)
