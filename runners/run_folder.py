"""Run folders of training (`--workdir`): naming, finding the run to resume, locking, the saved config.

Run folders
    `--workdir` is a folder of runs (default `results`) or one run folder. A new run gets
    `<workdir>/<YYYY_MM_DDTHH_MM_SS>_<model>_<sde>_<mask_type>_<acs>_<normalize_type>_<beta_max>_N_<num_scales>`
    (HFS-SDE) or `<workdir>/<timestamp>_<model>_<sde>_N_<num_scales>` (VP/VE), the published names. A run folder
    is recognised by its `config.json` (or a published `checkpoints-meta/checkpoint.pth`). Training resumes
        * the run folder named by `--workdir`, or
        * the newest unfinished run in `--workdir` whose `config.json` equals the current config, so a preempted
          job restarted with the same command continues where it stopped.
    A rerun never starts a new run while an unfinished one of the same config exists: a run locked by a live
    process (`.lock`, held by the training process only, see runners/folders.py) is waited for briefly (a killed
    process may still be exiting) and then refused in one line naming that process. No existing file that is not
    ours is overwritten; the temporary files of an interrupted checkpoint write are removed when a run is opened.

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
    RNG states of every rank, so a resumed run continues exactly as an uninterrupted one, and `config`, the keys
    that shape the weights (utils/checkpoints.py), so loading them under another SDE is warned about. A
    frequency ≤ 0 turns the corresponding action off.
"""
from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import logging
import os
import time

from runners import folders
from runners.folders import (LOCK_FILE, FolderBusy, FolderError, lock_folder, make_folder, remove_stale_temporaries,
                             try_lock)
from utils.atomic import atomic_path

CONFIG_FILE = "config.json"
FINISHED_FILE = "finished"
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


def _unfinished_run(config, parent: str, stack: contextlib.ExitStack) -> str | None:
    """The newest unfinished run in `parent` trained with exactly `config`, locked for us; None if there is none.

    A run of another process is waited for up to `folders.DYING_WAIT_S` seconds (a killed process may still be
    exiting); if every such run stays locked, `FolderBusy` names the newest one and its holder.
    """
    wanted = config_dict(config)
    runs = [os.path.join(parent, name) for name in sorted(os.listdir(parent), reverse=True)]
    runs = [run for run in runs if os.path.isdir(run) and not os.path.exists(os.path.join(run, FINISHED_FILE))
            and _saved_config(run) == wanted]
    deadline, waited = time.monotonic() + folders.DYING_WAIT_S, False
    while runs:
        holders = []
        for run_dir in runs:
            lock, holder = try_lock(run_dir, "--workdir")
            if lock is not None:
                stack.enter_context(lock)
                return run_dir
            holders.append(holder)
        if not waited:
            logging.info("waiting up to %g s for %s to release the unfinished run %s", folders.DYING_WAIT_S,
                         holders[0], runs[0])
            waited = True
        if time.monotonic() >= deadline:
            raise FolderBusy(f"the unfinished run {runs[0]} of this config is being trained by {holders[0]} (it "
                             f"holds {LOCK_FILE}); wait for it to end, or give another --workdir for a separate run")
        time.sleep(0.1)
    return None


def _new_run(config, parent: str, stack: contextlib.ExitStack) -> str:
    """Create and lock a fresh run folder in `parent` (a numbered suffix if the name is taken) with its config."""
    base = os.path.join(parent, run_name(config))
    for n in itertools.count():
        run_dir = base if n == 0 else f"{base}_{n}"
        try:
            os.makedirs(run_dir)
        except FileExistsError:
            continue
        except OSError as err:
            raise FolderError(f"--workdir={parent} is not writable ({err.strerror}); fix its permissions or give "
                              f"another --workdir") from None
        stack.enter_context(lock_folder(run_dir, "--workdir", "run folder"))
        save_config(config, run_dir)  # from now on a rerun finds this run and resumes it
        return run_dir


def open_run(config, workdir: str, stack: contextlib.ExitStack) -> str:
    """The run folder to train in (see the module docstring), locked for this process, with the temporary files of
    an interrupted write removed."""
    if is_run_dir(workdir):
        run_dir = workdir
        stack.enter_context(lock_folder(run_dir, "--workdir", "run folder"))
    else:
        make_folder(workdir, "--workdir")
        run_dir = _unfinished_run(config, workdir, stack) or _new_run(config, workdir, stack)
    remove_stale_temporaries(run_dir, ("checkpoints", os.path.dirname(META_CHECKPOINT)))
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
    with atomic_path(os.path.join(run_dir, CONFIG_FILE)) as tmp, open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
