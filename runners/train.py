"""Training of the score network: `train(config, workdir)`, run by `python main.py --mode train`.

The run folder and its files are described in `runners/run_folder.py`.

Length: `training.n_iters` steps when > 0, else `training.epochs` epochs (an incomplete last batch is dropped).
`torchrun --nproc_per_node=K main.py --mode train ...` trains with DistributedDataParallel (NCCL on CUDA, gloo on
CPU): each rank reads `training.batch_size` slices per step from its own shard of the data (global batch
K × batch_size), seeds are `seed + rank`, and only rank 0 writes logs and checkpoints. Speed options:
`training.bf16` (autocast) and `training.compile` on CUDA (ignored with a warning elsewhere), `training.channels_last`
on every device.

SIGINT (Ctrl-C) and SIGTERM stop training with one line naming the last checkpoint; a checkpoint being written
when the signal comes is completed first (runners/interrupts.py), and the same command resumes from it.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import datasets
import losses
import models
import sampling
from models.ema import ExponentialMovingAverage
from runners import build
from runners.distributed import Dist, all_rng_states, from_rank0, init_distributed, set_rng_state
from runners.first_use import prepare_data
from runners.interrupts import Interrupted, deferred, interruptible
from runners.run_folder import FINISHED_FILE, META_CHECKPOINT, open_run, save_config
from runners.run_logs import EventLog, log_file
from utils import checkpoints, metrics
from utils.common import derived_seed, seed_everything
from utils.mri import c2r, r2c, sense_adjoint

# Errors of the setup that are user mistakes (config values, data folders, paths): reported as one line.
_USER_ERRORS = (ValueError, OSError)


# ---- data -------------------------------------------------------------------------------------------------------
def images_from_batch(batch: dict, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Training images of a loader batch: the map-combined image `Aᴴk` (M = 1) as real `[B, 2, H, W]` on `device`."""
    kspace = batch["kspace"].to(device, non_blocking=True)
    maps = batch["maps"].to(device, non_blocking=True)
    images = c2r(sense_adjoint(kspace, maps, 1.0))
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


# ---- model ------------------------------------------------------------------------------------------------------
def _build_model(config, ctx: Dist, compile_: bool):
    """`(network, training module)`: the bare network and its DDP / torch.compile wrapping for training."""
    model = build.create_model(config).to(ctx.device)
    if config.training.channels_last:
        model = model.to(memory_format=torch.channels_last)
    wrapped = model
    if ctx.world_size > 1:
        wrapped = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if compile_:
        wrapped = torch.compile(wrapped)
    return model, wrapped


_EPOCH_CHECKPOINT = re.compile(r"checkpoint_(\d+)\.pth")


def _every(step: int, freq: int) -> bool:
    return freq > 0 and step % freq == 0


# ---- the loop ---------------------------------------------------------------------------------------------------
class _TrainLoop:
    """State and actions of one training run: step, log, evaluate, sample, save, resume."""

    def __init__(self, config, ctx: Dist):
        """Validate the config and data and build SDE, loaders, model, optimizer, EMA and step functions.

        The run folder is chosen afterwards (`run_dir`), so a setup error leaves no folder behind.
        """
        self.config, self.ctx, training = config, ctx, config.training
        self.run_dir = ""
        if training.n_iters <= 0 and training.epochs <= 0:
            raise ValueError(f"training.n_iters={training.n_iters} and training.epochs={training.epochs} leave "
                             f"nothing to train; give training.epochs >= 1, or training.n_iters >= 1 steps")
        self.sde = build.make_sde(config)
        self.train_set = datasets.make_dataset(config, "train")
        self.steps_per_epoch = len(self._loader(0, 0))
        bf16, compile_ = build.speed_options(config, "training")
        self.model, self.train_model = _build_model(config, ctx, compile_)
        optimizer = build.make_optimizer(config, self.train_model.parameters())
        ema = ExponentialMovingAverage(self.train_model.parameters(), decay=config.model.ema_rate)
        self.state = dict(model=self.train_model, ema=ema, optimizer=optimizer, step=0, epoch=0, batch_in_epoch=0)
        self.train_step = losses.get_step_fn(self.sde, True, build.make_optimize_fn(config),
                                             training.reduce_mean, training.continuous,
                                             training.likelihood_weighting, training.eps, bf16)
        self.eval_step = losses.get_step_fn(self.sde, False, None, training.reduce_mean, training.continuous,
                                            training.likelihood_weighting, training.eps, bf16)
        self.held_out = self._held_out_batch() if (training.eval_freq > 0 or training.snapshot_sampling) else None
        self.sample_mask = build.sample_mask(config) if training.snapshot_sampling else None
        method = config.sampling.method if build.is_diffusion(config.sampling.method) else "pc"  # PC for baselines
        self.snapshot_sampler = ((build.METHODS.get(method), build.method_settings(config, method))
                                 if training.snapshot_sampling else None)
        self.last_saved: tuple[str, int] | None = None
        self._sampled_at = -1
        self.events: EventLog | None = None
        self._window: dict = {}

    # -- setup helpers --
    def _loader(self, epoch: int, skip: int) -> DataLoader:
        return datasets.train_loader(self.train_set, self.config, epoch, skip)

    def _held_out_batch(self) -> dict:
        """The first `training.batch_size` usable validation slices (`data.eval_root`) in file order, on the device."""
        batch = datasets.first_slices(datasets.make_dataset(self.config, "eval"), self.config.training.batch_size)
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
        """Restore model, optimizer, EMA, counters and this rank's RNG state from the pre-emption checkpoint; a new
        run starts from the (EMA) weights of `training.init_checkpoint` when it is set."""
        path = os.path.join(self.run_dir, META_CHECKPOINT)
        if not os.path.isfile(path):
            init = self.config.training.init_checkpoint
            if init:
                if not os.path.isfile(init):
                    raise FileNotFoundError(f"training.init_checkpoint={init} does not exist; give a checkpoint file "
                                            f"to start from, or leave the key empty to train from scratch")
                step = checkpoints.load_model_weights(init, self.train_model, True, self.ctx.device,
                                                      build.checkpoint_record(self.config))
                self.state["ema"] = ExponentialMovingAverage(self.train_model.parameters(),
                                                             decay=self.config.model.ema_rate)
                logging.info("new run initialised from the EMA weights of %s (its step %d)", init, step)
            return
        try:
            checkpoints.load_checkpoint(path, self.state, self.ctx.device)
        except checkpoints.CheckpointError as err:  # unreadable file or another network
            raise checkpoints.CheckpointError(f"cannot resume the run in {self.run_dir}: {err}") from err
        step = self.state["step"] = int(self.state["step"])
        self.last_saved = (path, step)
        self.state.pop("config", None)  # the record of the run's config.json; rewritten at every save
        rng = self.state.pop("rng", None)
        if rng is not None and len(rng) == self.ctx.world_size:
            set_rng_state(rng[self.ctx.rank], self.ctx.device)
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
            self.events = EventLog(os.path.join(self.run_dir, "tensorboard"),
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
            if self.events is not None:
                self.events.close()
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
            if batch is None:  # every slice of the batch was broken and skipped (data.skip_broken)
                self.state["batch_in_epoch"] += 1
                continue
            self._step(batch)
            self.state["batch_in_epoch"] += 1
            bar.update(1)
            self._after_step(bar)
        if self.state["batch_in_epoch"] == self.steps_per_epoch:
            self.state["epoch"], self.state["batch_in_epoch"] = epoch + 1, 0
            if _every(epoch + 1, self.config.training.epoch_snapshot_freq):
                self._save([os.path.join("checkpoints", f"checkpoint_{epoch + 1}.pth"), META_CHECKPOINT])
                self._prune_epoch_checkpoints()
                self._sample_snapshot()

    def _step(self, batch: dict) -> None:
        images = images_from_batch(batch, self.ctx.device, self.config.training.channels_last)
        try:
            out = self.train_step(self.state, images)
        except losses.NonFiniteLossError as err:
            raise SystemExit(f"train: {err}; training stopped and {self.kept()}. Lower optim.lr, keep "
                             f"optim.grad_clip > 0 or check the data, then resume with --workdir {self.run_dir}"
                             ) from None
        w = self._window
        w["loss"] += out["loss"]
        w["grad_norm"] += out["grad_norm"]
        w["steps"] += 1
        w["images"] += images.shape[0]

    def _after_step(self, bar) -> None:
        step, training = self.state["step"], self.config.training
        if _every(step, training.log_freq):
            self._log(bar)
        if _every(step, training.eval_freq):
            self._paused(self._evaluate)
        if _every(step, training.snapshot_freq):
            self._save([os.path.join("checkpoints", f"checkpoint_step_{step}.pth"), META_CHECKPOINT])
            self._sample_snapshot()
        elif _every(step, training.snapshot_freq_for_preemption):
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
            self.events.scalar(tag, value, step)
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
        self.events.scalar("eval/loss", loss.item(), self.state["step"])

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
        sampler, settings = self.snapshot_sampler
        weights = (self.state["ema"].average_parameters(self.model.parameters()) if self.config.sampling.use_ema
                   else contextlib.nullcontext())
        with weights:
            x, _ = sampler(score_fn, self.sde, mask * kspace, maps, mask, settings, noise)
        self.train_model.train()
        reference = sense_adjoint(kspace, maps, 1.0).abs()[0]
        recon = r2c(x).abs()[0]
        scale = reference.max().clamp_min(torch.finfo(reference.dtype).tiny)
        self.events.image("eval/reconstruction", (torch.cat([reference, recon], -1) / scale).clamp(0, 1), step)
        self.events.scalar("eval/reconstruction_psnr", metrics.psnr(reference, recon), step)
        self._window["paused"] += time.perf_counter() - start

    # -- checkpoints --
    def kept(self) -> str:
        """Which checkpoint a stopped run keeps, for messages."""
        if self.last_saved is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is {self.last_saved[0]} (step {self.last_saved[1]})"

    def _save(self, names: list[str]) -> None:
        """Write the training state to `names` (relative to the run folder), atomically, on rank 0; a SIGINT or
        SIGTERM that comes meanwhile stops training once every file is written."""
        start = time.perf_counter()
        state = dict(self.state, rng=all_rng_states(self.ctx), config=build.checkpoint_record(self.config))
        with deferred():
            if self.ctx.is_main:
                for name in names:
                    checkpoints.save_checkpoint(os.path.join(self.run_dir, name), state)
                self.events.flush()
            self.last_saved = (os.path.join(self.run_dir, names[0]), self.state["step"])
        self._window["paused"] += time.perf_counter() - start

    def _prune_epoch_checkpoints(self) -> None:
        """Delete the epoch checkpoints older than the last `training.keep_epoch_checkpoints` (rank 0), except
        those of `training.keep_epochs`, so a long run's disk use stays bounded."""
        keep_last, folder = self.config.training.keep_epoch_checkpoints, os.path.join(self.run_dir, "checkpoints")
        if keep_last <= 0 or not self.ctx.is_main:
            return
        epochs = sorted(int(m.group(1)) for m in map(_EPOCH_CHECKPOINT.fullmatch, os.listdir(folder)) if m)
        for epoch in epochs[:-keep_last]:
            if epoch not in self.config.training.keep_epochs:
                os.remove(os.path.join(folder, f"checkpoint_{epoch}.pth"))

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
                 len(loop.train_set), c.training.batch_size, c.training.batch_size * ctx.world_size,
                 loop.steps_per_epoch, loop.total_steps())


def train(config, workdir: str) -> str:
    """Train the score network of `config` in a run folder of `workdir` (see the module docstring).

    Returns the run folder. User mistakes (bad config values, missing data, batch too large, ...) raise
    `SystemExit` with one line naming the key or path and the fix; so do a non-finite loss and SIGINT / SIGTERM.
    """
    ctx = loop = None
    try:
        with contextlib.ExitStack() as stack, interruptible():
            try:
                ctx = init_distributed(config)
                if not ctx.is_main:
                    logging.getLogger().setLevel(logging.WARNING)
                seed_everything(config.seed + ctx.rank)
                from_rank0(ctx, lambda: prepare_data([config.data.root, config.data.eval_root],
                                                     config.data.image_size))
                loop = _TrainLoop(config, ctx)
                loop.run_dir = from_rank0(ctx, lambda: open_run(config, workdir, stack))
                stack.enter_context(log_file(os.path.join(loop.run_dir, "train.log"), ctx.is_main))
                loop.resume()
                if ctx.is_main:
                    save_config(config, loop.run_dir)
            except _USER_ERRORS as err:
                raise SystemExit(f"train: {err}") from None
            _describe(loop)
            loop.run()
            return loop.run_dir
    except Interrupted as stop:
        where = (f"at step {loop.state['step']}; {loop.kept()}: rerun the same command (or --workdir "
                 f"{loop.run_dir}) to resume" if loop is not None and loop.run_dir else "before training began")
        raise SystemExit(f"train: stopped by {stop.name} {where}") from None
    finally:
        if ctx is not None and ctx.world_size > 1:
            dist.destroy_process_group()
