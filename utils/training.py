"""Training of the score network: `train(config, workdir)`, run by `python main.py --mode train`.

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

Length: `training.n_iters` steps when > 0, else `training.epochs` epochs (an incomplete last batch is dropped).
`torchrun --nproc_per_node=K main.py --mode train ...` trains with DistributedDataParallel (NCCL on CUDA, gloo on
CPU): each rank reads `training.batch_size` slices per step from its own shard of the data (global batch
K × batch_size), seeds are `seed + rank`, and only rank 0 writes logs and checkpoints. Speed options:
`training.bf16` (autocast) and `training.compile` on CUDA (ignored with a warning elsewhere), `training.channels_last`
on every device.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import json
import logging
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

import datasets
import losses
import models
import sampling
import sde_lib
from models.ema import ExponentialMovingAverage
from utils import checkpoints, metrics
from utils.common import cuda_speed_options, seed_everything
from utils.masks import get_mask
from utils.mri import c2r, r2c, sense_adjoint

try:  # POSIX: a run folder is locked while it trains.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

CONFIG_FILE = "config.json"
FINISHED_FILE = "finished"
LOCK_FILE = ".lock"
META_CHECKPOINT = os.path.join("checkpoints-meta", "checkpoint.pth")
# Errors of the setup that are user mistakes (config values, data folders, paths): reported as one line.
_USER_ERRORS = (ValueError, OSError)


# ---- distributed context ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Dist:
    """Rank, world size and device of this process (world size 1 without torchrun)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _init_distributed(config) -> _Dist:
    """Resolve `config.device`; under `torchrun` (WORLD_SIZE > 1) join the process group (NCCL/gloo)."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config.device={config.device!r} but no CUDA device is visible; "
                         "pass --config.device=cpu or run on a machine with a GPU")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return _Dist(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), world_size, device)


def _from_rank0(ctx: _Dist, fn):
    """Run `fn()` on rank 0 only and give its result, or its exception, to every rank (none is left waiting)."""
    box = [None, None]
    if ctx.is_main:
        try:
            box[0] = fn()
        except Exception as err:  # re-raised below, on every rank
            box[1] = err
    if ctx.world_size > 1:
        dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise box[1]
    return box[0]


# ---- run folder -------------------------------------------------------------------------------------------------
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


def _config_dict(config) -> dict:
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
    wanted = _config_dict(config)
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


def _open_run(config, workdir: str, stack: contextlib.ExitStack) -> str:
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
    old, new = _saved_config(run_dir), _config_dict(config)
    if old is not None and old != new:
        changed = [f"{g}.{k}: {old.get(g, {}).get(k)!r} -> {v!r}" for g, group in new.items()
                   if isinstance(group, dict) for k, v in group.items() if old.get(g, {}).get(k) != v]
        changed += [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if not isinstance(v, dict)
                    and old.get(k) != v]
        logging.warning("resuming %s with a changed config: %s", run_dir, "; ".join(changed))


def _save_config(config, run_dir: str) -> None:
    """Write the resolved config to the run's `config.json` (atomically)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    with open(path + ".tmp", "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(path + ".tmp", path)


# ---- data -------------------------------------------------------------------------------------------------------
class _ShardSampler(DistributedSampler):
    """DistributedSampler (shuffled with `seed + epoch`, one shard per rank) that can start part-way into an epoch
    by skipping its first `skip` indices."""

    def __init__(self, dataset, ctx: _Dist, seed: int, epoch: int, skip: int):
        super().__init__(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return max(super().__len__() - self.skip, 0)


def _epoch_loader(base: DataLoader, batch_size: int, ctx: _Dist, seed: int, epoch: int, skip: int) -> DataLoader:
    """`base` reading this rank's shard in the seeded order of `epoch`, from batch `skip` on."""
    sampler = _ShardSampler(base.dataset, ctx, seed, epoch, skip * batch_size)
    workers = base.num_workers
    return DataLoader(base.dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=base.collate_fn, pin_memory=ctx.device.type == "cuda", drop_last=base.drop_last,
                      worker_init_fn=base.worker_init_fn, prefetch_factor=base.prefetch_factor,
                      generator=torch.Generator().manual_seed(derived_seed(seed, epoch, ctx.rank)))


def images_from_batch(batch: dict, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Training images of a loader batch: the map-combined image `Aᴴk` (M = 1) as real `[B, 2, H, W]` on `device`."""
    kspace = batch["kspace"].to(device, non_blocking=True)
    maps = batch["maps"].to(device, non_blocking=True)
    images = c2r(sense_adjoint(kspace, maps, 1.0))
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def derived_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer `keys` (e.g. seed, epoch, rank), distinct for distinct keys."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


# ---- RNG states (tensors, so checkpoints load with weights_only=True) -------------------------------------------
def _rng_state(device: torch.device) -> dict:
    """RNG states of torch (CPU and this process's CUDA device), numpy and Python, all as tensors."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": torch.from_numpy(np_keys.astype(np.int64)),
             "numpy_extra": torch.tensor([np_pos, np_has_gauss, np_gauss], dtype=torch.float64),
             "python": torch.tensor((py_version,) + py_state, dtype=torch.int64),
             "python_gauss": torch.tensor(math.nan if py_gauss is None else py_gauss, dtype=torch.float64)}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    """Restore the states of `_rng_state` (tensors on any device: checkpoints load onto the training device)."""
    state = {k: v.cpu() for k, v in state.items()}
    torch.set_rng_state(state["torch"])
    pos, has_gauss, gauss = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    py = state["python"].tolist()
    py_gauss = state["python_gauss"].item()
    random.setstate((py[0], tuple(py[1:]), None if math.isnan(py_gauss) else py_gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _all_rng_states(ctx: _Dist) -> list[dict]:
    """The RNG states of every rank, in rank order (a collective: every rank must call it)."""
    if ctx.world_size == 1:
        return [_rng_state(ctx.device)]
    states = [None] * ctx.world_size
    dist.all_gather_object(states, _rng_state(ctx.device))
    return states


# ---- model ------------------------------------------------------------------------------------------------------
def _build_model(config, ctx: _Dist, compile_: bool):
    """`(network, training module)`: the bare network and its DDP / torch.compile wrapping for training."""
    model = models.create_model(config).to(ctx.device)
    if config.training.channels_last:
        model = model.to(memory_format=torch.channels_last)
    wrapped = model
    if ctx.world_size > 1:
        wrapped = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if compile_:
        wrapped = torch.compile(wrapped)
    return model, wrapped


@contextlib.contextmanager
def _ema_weights(ema: ExponentialMovingAverage, model: torch.nn.Module, enabled: bool = True):
    """Swap the EMA averages into `model` for the duration of the block."""
    if not enabled:
        yield
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield
    finally:
        ema.restore(model.parameters())


def _every(step: int, freq: int) -> bool:
    return freq > 0 and step % freq == 0


# ---- the loop ---------------------------------------------------------------------------------------------------
class _TrainLoop:
    """State and actions of one training run: step, log, evaluate, sample, save, resume."""

    def __init__(self, config, ctx: _Dist):
        """Validate the config and data and build SDE, loaders, model, optimizer, EMA and step functions.

        The run folder is chosen afterwards (`run_dir`), so a setup error leaves no folder behind.
        """
        self.config, self.ctx, t = config, ctx, config.training
        self.run_dir = ""
        self.sde = sde_lib.get_sde(config)
        self.base_loader = datasets.get_dataset(config, "train")
        self.batch_size = config.training.batch_size
        self.steps_per_epoch = len(self._loader(0, 0))
        bf16, compile_ = cuda_speed_options(config, "training")
        self.model, self.train_model = _build_model(config, ctx, compile_)
        optimizer = losses.get_optimizer(config, self.train_model.parameters())
        ema = ExponentialMovingAverage(self.train_model.parameters(), decay=config.model.ema_rate)
        self.state = dict(model=self.train_model, ema=ema, optimizer=optimizer, step=0, epoch=0, batch_in_epoch=0)
        self.train_step = losses.get_step_fn(self.sde, True, losses.optimization_manager(config), t.reduce_mean,
                                             t.continuous, t.likelihood_weighting, t.eps, bf16)
        self.eval_step = losses.get_step_fn(self.sde, False, None, t.reduce_mean, t.continuous,
                                            t.likelihood_weighting, t.eps, bf16)
        self.held_out = self._held_out_batch() if (t.eval_freq > 0 or t.snapshot_sampling) else None
        self.sample_mask = get_mask(config, "sample") if t.snapshot_sampling else None
        self.last_saved: tuple[str, int] | None = None
        self._sampled_at = -1
        self.writer: SummaryWriter | None = None
        self._window: dict = {}

    # -- setup helpers --
    def _loader(self, epoch: int, skip: int) -> DataLoader:
        return _epoch_loader(self.base_loader, self.batch_size, self.ctx, self.config.seed, epoch, skip)

    def _held_out_batch(self) -> dict:
        """The first `training.batch_size` validation slices (`data.eval_root`) in file order, on the device."""
        loader = datasets.get_dataset(self.config, "eval")
        batch = next(iter(DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn)))
        images = images_from_batch(batch, self.ctx.device, self.config.training.channels_last)
        return {"images": images, "kspace": batch["kspace"][:1].to(self.ctx.device),
                "maps": batch["maps"][:1].to(self.ctx.device)}

    def done(self) -> bool:
        n_iters = self.config.training.n_iters
        return self.state["step"] >= n_iters if n_iters > 0 else self.state["epoch"] >= self.config.training.epochs

    def total_steps(self) -> int:
        n_iters = self.config.training.n_iters
        return n_iters if n_iters > 0 else self.config.training.epochs * self.steps_per_epoch

    # -- resume --
    def resume(self) -> None:
        """Restore model, optimizer, EMA, counters and this rank's RNG state from the pre-emption checkpoint."""
        path = os.path.join(self.run_dir, META_CHECKPOINT)
        if not os.path.isfile(path):
            return
        try:
            checkpoints.load_checkpoint(path, self.state, self.ctx.device)
        except RuntimeError as err:  # unreadable file or another network: a user error, reported in one message
            raise ValueError(f"cannot resume the run in {self.run_dir}: {err}") from err
        step = self.state["step"] = int(self.state["step"])
        self.last_saved = (path, step)
        rng = self.state.pop("rng", None)
        if rng is not None and len(rng) == self.ctx.world_size:
            _set_rng_state(rng[self.ctx.rank], self.ctx.device)
        else:
            if rng is None:  # published format {model, ema, optimizer, step}
                self.state["epoch"] = step // self.steps_per_epoch
            logging.warning("%s holds RNG states for %s process(es) and this run has %d: epoch %d restarts from "
                            "its first batch with reseeded random streams", path, len(rng) if rng else "no",
                            self.ctx.world_size, self.state["epoch"] + 1)
            self.state["batch_in_epoch"] = 0
            seed_everything(derived_seed(self.config.seed, self.ctx.rank, step))
        logging.info("resumed from %s at step %d (epoch %d, batch %d)", path, step, self.state["epoch"] + 1,
                     self.state["batch_in_epoch"])

    # -- run --
    def run(self) -> None:
        """Train until `training.n_iters` steps or `training.epochs` epochs, then save the final checkpoint."""
        finished = os.path.join(self.run_dir, FINISHED_FILE)
        if self.done():
            logging.info("%s has already finished (step %d); raise training.epochs or training.n_iters to continue",
                         self.run_dir, self.state["step"])
        else:
            if self.ctx.is_main:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(finished)
            self._train()
        if self.ctx.is_main:
            open(finished, "w").close()

    def _train(self) -> None:
        """The epochs left, between opening and closing the TensorBoard writer; the final checkpoint."""
        if self.ctx.is_main:
            # Events of steps after the checkpoint we resumed from are stale: TensorBoard hides them.
            self.writer = SummaryWriter(os.path.join(self.run_dir, "tensorboard"),
                                        purge_step=self.state["step"] + 1 if self.state["step"] else None)
        show = self.ctx.is_main and sys.stderr.isatty()
        try:
            with tqdm(total=self.total_steps(), initial=self.state["step"], disable=not show, unit="step",
                      dynamic_ncols=True) as bar:
                self._reset_window()
                while not self.done():
                    self._train_epoch(bar)
            if self.last_saved is None or self.last_saved[1] != self.state["step"]:
                self._save([META_CHECKPOINT])
        finally:
            if self.writer is not None:
                self.writer.close()
        self._check_replicas()
        logging.info("training finished at step %d; checkpoints in %s", self.state["step"], self.run_dir)

    def _train_epoch(self, bar) -> None:
        """The rest of the current epoch (or fewer batches when `training.n_iters` ends the run first)."""
        epoch, skip = self.state["epoch"], self.state["batch_in_epoch"]
        n_iters = self.config.training.n_iters
        left = self.steps_per_epoch - skip
        if n_iters > 0:
            left = min(left, n_iters - self.state["step"])
        for batch in itertools.islice(self._loader(epoch, skip), left):
            self._step(batch)
            self.state["batch_in_epoch"] += 1
            bar.update(1)
            self._after_step(bar)
        if self.state["batch_in_epoch"] == self.steps_per_epoch:
            self.state["epoch"], self.state["batch_in_epoch"] = epoch + 1, 0
            if _every(epoch + 1, self.config.training.epoch_snapshot_freq):
                self._save([os.path.join("checkpoints", f"checkpoint_{epoch + 1}.pth"), META_CHECKPOINT])
                self._sample_snapshot()

    def _step(self, batch: dict) -> None:
        images = images_from_batch(batch, self.ctx.device, self.config.training.channels_last)
        try:
            out = self.train_step(self.state, images)
        except losses.NonFiniteLossError as err:
            kept = (f"the last good checkpoint is {self.last_saved[0]} (step {self.last_saved[1]})"
                    if self.last_saved else "no checkpoint was written yet")
            raise SystemExit(f"train: {err}; training stopped and {kept}. Lower optim.lr, keep optim.grad_clip > 0 "
                             f"or check the data, then resume with --workdir {self.run_dir}") from None
        w = self._window
        w["loss"] += out["loss"]
        w["grad_norm"] += out["grad_norm"]
        w["steps"] += 1
        w["images"] += images.shape[0]

    def _after_step(self, bar) -> None:
        step, t = self.state["step"], self.config.training
        if _every(step, t.log_freq):
            self._log(bar)
        if _every(step, t.eval_freq):
            self._paused(self._evaluate)
        if _every(step, t.snapshot_freq):
            self._save([os.path.join("checkpoints", f"checkpoint_step_{step}.pth"), META_CHECKPOINT])
            self._sample_snapshot()
        elif _every(step, t.snapshot_freq_for_preemption):
            self._save([META_CHECKPOINT])

    # -- logging --
    def _reset_window(self) -> None:
        zero = torch.zeros((), device=self.ctx.device)
        self._window = {"loss": zero.clone(), "grad_norm": zero.clone(), "steps": 0, "images": 0,
                        "start": time.perf_counter(), "paused": 0.0}

    def _paused(self, fn) -> None:
        """Run `fn` with its time left out of the images/s measurement."""
        start = time.perf_counter()
        fn()
        self._window["paused"] += time.perf_counter() - start

    def _log(self, bar) -> None:
        """Write the window's mean loss and grad norm (over all ranks), the lr and the global images/s."""
        w = self._window
        totals = torch.stack([w["loss"], w["grad_norm"], torch.tensor(float(w["steps"]), device=self.ctx.device),
                              torch.tensor(float(w["images"]), device=self.ctx.device)])
        if self.ctx.world_size > 1:
            dist.all_reduce(totals)
        loss, grad_norm, steps, images = totals.tolist()
        seconds = time.perf_counter() - w["start"] - w["paused"]
        self._reset_window()
        if not self.ctx.is_main:
            return
        step = self.state["step"]
        scalars = {"train/loss": loss / steps, "train/grad_norm": grad_norm / steps,
                   "train/lr": self.state["optimizer"].param_groups[0]["lr"], "train/images_per_s": images / seconds}
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        bar.set_postfix(loss=f"{scalars['train/loss']:.4g}", refresh=False)
        logging.info("step %d: loss %.5g, grad norm %.3g, lr %.3g, %.1f images/s", step, scalars["train/loss"],
                     scalars["train/grad_norm"], scalars["train/lr"], scalars["train/images_per_s"])

    def _evaluate(self) -> None:
        """Loss of the EMA weights on the held-out batch, with the same noise every time (rank 0)."""
        if not self.ctx.is_main:
            return
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed)
            loss = self.eval_step({"model": self.model, "ema": self.state["ema"]}, self.held_out["images"])["loss"]
        self.train_model.train()
        self.writer.add_scalar("eval/loss", loss.item(), self.state["step"])

    def _sample_snapshot(self) -> None:
        """Reconstruct the first held-out slice (`sampling.*` settings; the PC sampler unless `sampling.method` is
        another diffusion sampler) and log it beside the reference (rank 0)."""
        step = self.state["step"]
        if not (self.config.training.snapshot_sampling and self.ctx.is_main) or self._sampled_at == step:
            return
        self._sampled_at = step  # a step and an epoch snapshot can fall on the same step: sample once
        start = time.perf_counter()
        kspace, maps, mask = self.held_out["kspace"], self.held_out["maps"], self.sample_mask
        score_fn = models.get_score_fn(self.sde, self.model, train=False, continuous=self.config.training.continuous)
        noise = sampling.SampleNoise([self.config.sampling.seed], self.ctx.device)
        sampler = sampling.SAMPLERS.get(self.config.sampling.method, sampling.pc_sampler)  # PC for baseline methods
        with _ema_weights(self.state["ema"], self.model, self.config.sampling.use_ema):
            x, _ = sampler(self.config, self.sde, score_fn, mask * kspace, maps, mask, noise)
        self.train_model.train()
        reference = sense_adjoint(kspace, maps, 1.0).abs()[0]
        recon = r2c(x).abs()[0]
        scale = reference.max().clamp_min(torch.finfo(reference.dtype).tiny)
        self.writer.add_image("eval/reconstruction", (torch.cat([reference, recon], -1) / scale).clamp(0, 1), step)
        self.writer.add_scalar("eval/reconstruction_psnr", metrics.psnr(reference, recon), step)
        self._window["paused"] += time.perf_counter() - start

    # -- checkpoints --
    def _save(self, names: list[str]) -> None:
        """Write the training state to `names` (relative to the run folder), atomically, on rank 0."""
        start = time.perf_counter()
        state = dict(self.state, rng=_all_rng_states(self.ctx))
        if self.ctx.is_main:
            for name in names:
                checkpoints.save_checkpoint(os.path.join(self.run_dir, name), state)
            self.writer.flush()
        self.last_saved = (os.path.join(self.run_dir, names[0]), self.state["step"])
        self._window["paused"] += time.perf_counter() - start

    def _check_replicas(self) -> None:
        """With several processes, verify that every rank ends with the same parameters (per-tensor checksums)."""
        if self.ctx.world_size == 1:
            return
        sums = torch.stack([p.detach().double().sum() for p in self.model.parameters()])
        gathered = [torch.empty_like(sums) for _ in range(self.ctx.world_size)]
        dist.all_gather(gathered, sums)
        if not all(torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError("the parameters differ between ranks after training; DistributedDataParallel "
                               "replicas went out of sync")
        logging.info("all %d ranks hold identical parameters at step %d", self.ctx.world_size, self.state["step"])


# ---- entry point ------------------------------------------------------------------------------------------------
def _describe(loop: _TrainLoop) -> None:
    c, ctx = loop.config, loop.ctx
    n_params = sum(p.numel() for p in loop.model.parameters())
    logging.info("run folder %s", loop.run_dir)
    logging.info("%s network, %.2fM parameters, %s SDE, device %s, %d process(es)", c.model.name, n_params / 1e6,
                 c.training.sde, ctx.device, ctx.world_size)
    logging.info("%d training slices, batch %d per process (global %d), %d steps per epoch, %d steps in all",
                 len(loop.base_loader.dataset), c.training.batch_size, c.training.batch_size * ctx.world_size,
                 loop.steps_per_epoch, loop.total_steps())


@contextlib.contextmanager
def _log_file(path: str, enabled: bool):
    """Copy log records to `path` (appending) while the block runs."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(filename)s:%(lineno)d] %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def train(config, workdir: str) -> str:
    """Train the score network of `config` in a run folder of `workdir` (see the module docstring).

    Returns the run folder. User mistakes (bad config values, missing data, batch too large, ...) raise
    `SystemExit` with one line naming the key or path and the fix; so does a non-finite loss.
    """
    ctx = None
    try:
        with contextlib.ExitStack() as stack:
            try:
                ctx = _init_distributed(config)
                if not ctx.is_main:
                    logging.getLogger().setLevel(logging.WARNING)
                seed_everything(config.seed + ctx.rank)
                loop = _TrainLoop(config, ctx)
                loop.run_dir = _from_rank0(ctx, lambda: _open_run(config, workdir, stack))
                stack.enter_context(_log_file(os.path.join(loop.run_dir, "train.log"), ctx.is_main))
                loop.resume()
                if ctx.is_main:
                    _save_config(config, loop.run_dir)
            except _USER_ERRORS as err:
                raise SystemExit(f"train: {err}") from None
            _describe(loop)
            loop.run()
            return loop.run_dir
    finally:
        if ctx is not None and ctx.world_size > 1:
            dist.destroy_process_group()
