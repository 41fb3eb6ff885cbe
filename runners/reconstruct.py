"""`main.py --mode sample`: reconstruct a test set with a diffusion sampler or a classical baseline, score it and
write the results.

Outputs, in one folder per setting (`sampling.output_dir`, or `<workdir>/<sampling.folder>/samples/<setting>`):
    recon_<file>_<slice>.mat   keys recon, zero_filled, ground_truth (complex [H, W]) — one per slice
    <file>_<slice>.png         zero-filled | reconstruction (titled with SDE, sampler and steps) | ground truth |
                               |error| with its scale; the images scored, PSNR/SSIM (fastMRI convention) in the titles
    <file>.h5                  fastMRI-style `reconstruction` [slices, H, W] (magnitude, float32) and `slices`
    metrics.csv                one row per slice: both metric conventions (utils/metrics.py), the data residuals,
                               `flagged`, seconds, NFE
    volumes.csv                fastMRI per-volume metrics
    summary.json               means over slices, flagged slices, NFE, seconds per slice, method, mask
    setting.json               the config that made them

Data residual: `‖M(F S x) − y‖ / ‖y‖` of the reconstruction `x` against the measured k-space `y` (no ground truth
needed), `zf_residual` the same for the zero-filled image. A slice whose residual exceeds
`FLAG_FACTOR × zf_residual + FLAG_MARGIN` (2× + 0.05) does not fit its own measurements (a sampler that diverged,
a checkpoint of another setting): it is flagged (`flagged` = 1) with a warning in the log.

Every file is written atomically and the folder has one writer at a time (runners/folders.py); a second run into
it waits briefly and then stops with a line naming the process that holds it. A rerun with the same setting skips
the finished slices (complete row and readable `.mat`, runners/outputs.py) and rebuilds the volumes and the summary
from one row per slice; a folder holding another setting's results (other than batch size, slice limit or speed
options) is refused rather than mixed.

Slices: the first `sampling.max_slices` of the test set in file order (all when 0), less the finished ones, in
batches of `sampling.batch_size` (0: automatic, `resolve_batch_size`). Every slice draws its noise from its own seed
(`slice_seed`), so its reconstruction depends neither on the batch nor on the process that makes it.

Several processes: `torchrun --nproc_per_node=K main.py --mode sample ...` splits the slices left to do over the K
ranks (slice j of that list goes to rank j mod K, before batching) and fills the one folder of a single run. Rank 0
holds the folder's lock for the whole job and writes `metrics.csv`, the volumes and the summaries; rank r > 0 writes
only its own slices' `.mat`/`.png` files and its rows to `metrics.rank<r>.csv` (runners/outputs.py), which rank 0
takes in after every rank has finished (a barrier; ranks that finish early wait up to `RANK_WAIT`). A rank that
fails makes torchrun stop the others; a rerun, with any number of processes, keeps every slice finished so far.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import time
import zlib

import numpy as np
import torch
import torch.distributed as dist
from scipy.ndimage import binary_fill_holes

import datasets
import sampling
import sde_lib
from baselines import BASELINES
from models import create_model, get_score_fn
from runners import folders, outputs
from runners.distributed import Dist, from_rank0, init_distributed
from utils import metrics
from utils.checkpoints import load_model_weights
from utils.common import cuda_speed_options
from utils.masks import get_mask, mask_name
from utils.mri import r2c, sense_adjoint, sense_forward

FLAG_FACTOR, FLAG_MARGIN = 2.0, 0.05
CPU_BATCH_SIZE = 4  # sampling.batch_size=0 on the CPU: batching gains little there (bench/README.md: 1.05× at 4)
MEMORY_FRACTION = 0.8  # sampling.batch_size=0 on CUDA: the share of the free memory the batch may fill
RANK_WAIT = datetime.timedelta(hours=24)  # how long a rank that has finished waits for the others
SDE_LABELS = {"hfssde": "HFS-SDE", "vpsde": "VP-SDE", "vesde": "VE-SDE", "subvpsde": "subVP-SDE"}
METHOD_LABELS = {"pc": "PC", "ode": "ODE", "ddim": "DDIM", "zero_filled": "zero-filled", "sense": "CG-SENSE",
                 "l1wavelet": "ℓ1-wavelet"}


def _datashift(config) -> str:
    return datasets.DATASHIFT_ALIASES.get(config.sampling.datashift, config.sampling.datashift)


def is_diffusion(method: str) -> bool:
    return method in sampling.SAMPLERS


def check_method(method: str) -> None:
    if not is_diffusion(method) and method not in BASELINES.names():
        raise ValueError(f"unknown sampling.method {method!r}; choose a diffusion sampler "
                         f"{sorted(sampling.SAMPLERS)} or a baseline {BASELINES.names()}")


def apply_tuned(config) -> None:
    """Set the values of `sampling.tuned` (a `best.json` of `main.py --mode tune`) into `config.sampling`; no-op when empty."""
    path = config.sampling.tuned
    if not path:
        return
    try:
        with open(path) as f:
            values = json.load(f)["sampling"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"sampling.tuned={path}: not a readable best.json of `main.py --mode tune` ({err})") from err
    unknown = sorted(set(values) - set(config.sampling.keys()))
    if unknown:
        raise ValueError(f"sampling.tuned={path} sets unknown sampling keys {unknown}")
    for key, value in values.items():
        config.sampling[key] = value


def checkpoint_path(config, workdir: str) -> str:
    """`sampling.checkpoint`, or `<workdir>/<sampling.folder>/checkpoints/checkpoint_<sampling.ckpt>.pth`."""
    s = config.sampling
    path = s.checkpoint or os.path.join(workdir, s.folder, "checkpoints", f"checkpoint_{s.ckpt}.pth")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no checkpoint at {path}. Train one with `bash train_fastMRI.sh {config.training.sde}` (it writes "
            f"<workdir>/<run>/checkpoints/checkpoint_<epoch>.pth), then pass --config.sampling.folder=<run> "
            f"--config.sampling.ckpt=<epoch>; put published weights at "
            f"{os.path.join(workdir, '<folder>', 'checkpoints', 'checkpoint_190.pth')}; or give any file with "
            f"--config.sampling.checkpoint=<path>")
    return path


def setting_name(config) -> str:
    """Folder name of one reconstruction setting: test set, mask, method and its parameters."""
    s = config.sampling
    parts = [_datashift(config), mask_name(s.mask_type, s.acc, s.acs), s.method]
    if is_diffusion(s.method):
        steps, snr = sampling.sampling_schedule(config)
        ckpt = os.path.splitext(os.path.basename(s.checkpoint))[0] if s.checkpoint else f"ckpt{s.ckpt}"
        parts += [config.training.sde, ckpt, f"N{steps}"]
        if s.method == "ddim":
            parts += [f"eta{s.eta:g}", f"dc{s.dc_lambda:g}x{s.dc_iters}"]
        else:
            parts += [s.predictor, s.corrector, f"snr{snr:g}", f"mse{s.mse:g}", f"cmse{s.corrector_mse:g}"]
        parts += ["ema" if s.use_ema else "raw", f"seed{s.seed}"]
        parts += [flag for flag, on in (("projscore", s.project_score), ("support", s.support_mask),
                                        ("denoise", s.denoise)) if on]
        if s.num_samples > 1:
            parts.append(f"K{s.num_samples}")
        if s.final_dc != "none":
            parts.append(f"dc{s.final_dc}" + (f"{s.dc_lambda:g}" if s.final_dc == "cg" else ""))
    elif s.method == "l1wavelet":
        parts.append(f"lambda{s.l1_lambda:g}")
    elif s.method == "sense":
        parts.append(f"iters{s.cg_iters}")
    return "_".join(str(p) for p in parts)


def output_folder(config, workdir: str) -> str:
    if config.sampling.output_dir:
        return config.sampling.output_dir
    return os.path.join(workdir, config.sampling.folder, "samples", setting_name(config))


def build_reconstructor(config, workdir: str):
    """`(fn(y, csm, mask, seeds) -> (complex images [B, K, H, W], network evaluations per slice), description)` for
    `sampling.method`: the
    `K = sampling.num_samples` posterior samples of each slice (one image for a baseline), all slices and samples in
    one sampler batch, each sample with its own noise stream (`sampling.posterior_seeds`). `fn`'s keyword
    `run_config` gives the method another config (the batch-size probe runs one step)."""
    method = config.sampling.method
    check_method(method)
    num_samples = int(config.sampling.num_samples)
    if num_samples < 1:
        raise ValueError(f"sampling.num_samples must be at least 1, got {num_samples}")
    if not is_diffusion(method):  # a baseline gives one image whatever sampling.num_samples says
        baseline = BASELINES.get(method)
        return (lambda y, csm, mask, seeds, run_config=config: (baseline(y, csm, mask, run_config), 0)), method
    sampling.PREDICTORS.get(config.sampling.predictor)
    sampling.CORRECTORS.get(config.sampling.corrector)
    sampling.check_final_dc(config.sampling.final_dc)
    sde = sde_lib.get_sde(config)
    model = create_model(config)
    path = checkpoint_path(config, workdir)
    step = load_model_weights(path, model, config.sampling.use_ema, config.device, config)
    model.eval()
    bf16, compile_ = cuda_speed_options(config, "sampling")
    score_fn = get_score_fn(sde, torch.compile(model) if compile_ else model, train=False,
                            continuous=config.training.continuous, bf16=bf16)
    sampler = sampling.SAMPLERS[method]
    _check_low_frequencies_measured(config, sde)

    def reconstruct_batch(y, csm, mask, seeds, run_config=config):
        noise = sampling.SampleNoise(sampling.posterior_seeds(seeds, num_samples), y.device)
        x, nfe = sampler(run_config, sde, score_fn, y.repeat_interleave(num_samples, 0),
                         csm.repeat_interleave(num_samples, 0), mask, noise,
                         show_progress=run_config.sampling.show_progress)
        return r2c(x).reshape(y.shape[0], num_samples, *x.shape[-2:]), nfe * num_samples  # evaluations per slice

    return reconstruct_batch, f"{method} with {path} (step {step})"


def _check_low_frequencies_measured(config, sde) -> None:
    if sde.lowfreq_mask is None:
        return
    sample_mask = get_mask(config, "sample")
    missing = int(((sde.lowfreq_mask > 0) & (sample_mask == 0)).sum())
    if missing:
        logging.warning("the sampling mask %s leaves %d samples of the low-frequency region (training.mask_type="
                        "%s, training.acs=%s) unmeasured; HFS-SDE keeps that region from the data, so raise "
                        "sampling.acs to at least training.acs", mask_name(config.sampling.mask_type,
                        config.sampling.acc, config.sampling.acs), missing, config.training.mask_type,
                        config.training.acs)


def method_label(config) -> str:
    """The method as a figure title: `HFS-SDE PC, 100 steps` for a diffusion sampler, `CG-SENSE` for a baseline."""
    method = config.sampling.method
    label = METHOD_LABELS.get(method, method)
    if not is_diffusion(method):
        return label
    steps, _ = sampling.sampling_schedule(config)
    return f"{SDE_LABELS.get(config.training.sde.lower(), config.training.sde)} {label}, {steps} steps"


def data_residual(x: torch.Tensor, y: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Relative data residual `‖M(F S x) − y‖ / ‖y‖` per slice: images `[B, 1, H, W]`, measured k-space `y` and
    maps `[B, C, H, W]`, mask `[.., H, W]` → `[B]` (0 where `y` is all zero)."""
    dims = tuple(range(1, y.ndim))
    misfit = torch.linalg.vector_norm(sense_forward(x, maps, mask) - y, dim=dims)
    norm = torch.linalg.vector_norm(y, dim=dims)
    return torch.where(norm > 0, misfit / norm.clamp_min(torch.finfo(norm.dtype).tiny), 0.0)


def is_flagged(residual: float, zf_residual: float) -> bool:
    """Whether a slice's data residual is far above zero-filled's (a non-finite residual is flagged too)."""
    return not residual <= FLAG_FACTOR * zf_residual + FLAG_MARGIN


def slice_seed(base: int, fname: str, index: int) -> int:
    """Noise seed of one slice: independent of batch composition and order."""
    return (base * 1_000_003 + zlib.crc32(f"{fname}:{index}".encode())) % 2**63


def object_support(truth: np.ndarray) -> np.ndarray:
    """Support of the object (magnitude above 2 % of its maximum, holes filled): the region of the published metrics
    on the phantom set and of the posterior calibration figures."""
    return binary_fill_holes(truth > 0.02 * truth.max())


def _check_sizes(mask: torch.Tensor, kspace: torch.Tensor, config) -> None:
    if tuple(mask.shape[-2:]) != tuple(kspace.shape[-2:]):
        raise ValueError(f"the sampling mask {mask_name(config.sampling.mask_type, config.sampling.acc, config.sampling.acs)} "
                         f"is {tuple(mask.shape[-2:])} but the test k-space is {tuple(kspace.shape[-2:])}; set "
                         f"data.image_size to the data's size or give a mask of that size")


def reconstruct_loader(config, reconstruct_batch, loader, mask, records: outputs.SliceRecords) -> None:
    """Reconstruct, score and write every slice of `loader`, adding its row to `records`."""
    out = records.out
    phantom = _datashift(config) == "phantom"
    title = method_label(config)
    for batch in loader:
        if batch is None:  # every slice of the batch was broken and skipped (data.skip_broken)
            continue
        kspace = batch["kspace"].to(config.device)
        maps = batch["maps"].to(config.device)
        _check_sizes(mask, kspace, config)
        names, indices = batch["fname"], batch["slice"].tolist()
        y = mask * kspace
        start = time.perf_counter()
        samples, nfe = reconstruct_batch(y, maps, mask, [slice_seed(config.sampling.seed, f, s)
                                                         for f, s in zip(names, indices)])
        recon = samples.mean(dim=1, keepdim=True)
        std = samples.abs().std(dim=1) if samples.shape[1] > 1 else None
        if recon.is_cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / len(names)
        truth = sense_adjoint(kspace, maps, 1.0)
        zero_filled = sense_adjoint(y, maps, mask)
        residuals = data_residual(recon, y, maps, mask).tolist()
        zf_residuals = data_residual(zero_filled, y, maps, mask).tolist()
        for j, (fname, index) in enumerate(zip(names, indices)):
            images = [v[j, 0].cpu().numpy() for v in (recon, zero_filled, truth)]
            mags = [np.abs(v) for v in images]
            support = object_support(mags[2]) if phantom else None
            posterior = {} if std is None else {"std": std[j].cpu().numpy()}
            row = {"fname": fname, "slice": index, **metrics.evaluate(mags[2], mags[0], support=support),
                   **{f"zf_{k}": v for k, v in metrics.evaluate(mags[2], mags[1]).items() if k in ("nmse", "psnr", "ssim")},
                   "residual": residuals[j], "zf_residual": zf_residuals[j],
                   "flagged": int(is_flagged(residuals[j], zf_residuals[j])), "seconds": seconds, "nfe": nfe}
            if posterior:
                row.update(metrics.calibration(mags[2], mags[0], posterior["std"], object_support(mags[2])))
                if config.sampling.save_samples:
                    posterior["samples"] = samples[j].cpu().numpy()
            outputs.write_slice(out, fname, index, *images, row, title, **posterior)
            records.add(row)
            logging.info("%s slice %d: PSNR %.2f dB (zero-filled %.2f), SSIM %.4f, data residual %.4f (zero-filled "
                         "%.4f), %.1f s", fname, index, row["psnr"], row["zf_psnr"], row["ssim"], row["residual"],
                         row["zf_residual"], seconds)
            if row["flagged"]:
                logging.warning("%s slice %d is flagged: its data residual %.4f is far above zero-filled's %.4f "
                                "(> %g × zero-filled + %g), so the reconstruction does not fit its own measurements; "
                                "check the checkpoint and the sampler settings (sampling.snr, mse, corrector_mse)",
                                fname, index, row["residual"], row["zf_residual"], FLAG_FACTOR, FLAG_MARGIN)


def summarize(config, rows: list[dict], volumes: list[dict], description: str) -> dict:
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    s = config.sampling
    summary = {"method": s.method if not is_diffusion(s.method) else f"{config.training.sde}-{s.method}",
               "description": description, "mask": mask_name(s.mask_type, s.acc, s.acs),
               "datashift": _datashift(config), "n_slices": len(rows)}
    for key in ("nmse", "psnr", "ssim", "nmse_published", "psnr_published", "ssim_published", "zf_nmse",
                "zf_psnr", "zf_ssim", "residual", "zf_residual"):
        summary[key] = mean(key)
    summary["n_flagged"] = int(sum(r["flagged"] for r in rows))
    summary["num_samples"] = int(s.num_samples)
    for key in outputs.POSTERIOR_FIELDS:
        if all(key in r for r in rows):
            summary[key] = float(np.nanmean([r[key] for r in rows]))
    summary["nfe"] = int(max(r["nfe"] for r in rows))
    summary["seconds_per_slice"] = mean("seconds")
    for key in ("nmse", "psnr", "ssim"):
        summary[f"{key}_volume"] = float(np.mean([v[key] for v in volumes]))
    return summary


def fit_batch_size(peak_1: int, peak_2: int, free: int, n_slices: int, fraction: float = MEMORY_FRACTION) -> int:
    """The largest batch whose memory fits `fraction` of `free` bytes, extrapolated linearly from the peak memory
    (bytes) of batches of 1 and 2 slices: `fixed + b·per_slice ≤ fraction·free` with `per_slice = peak_2 − peak_1`
    and `fixed = peak_1 − per_slice` (at least 0); at least 1 and at most `n_slices` (all of them when memory does
    not grow with the batch)."""
    cap = max(int(n_slices), 1)
    per_slice = peak_2 - peak_1
    if per_slice <= 0:
        return cap
    fixed = max(peak_1 - per_slice, 0)
    return int(min(max((fraction * free - fixed) // per_slice, 1), cap))


def _one_step(config):
    """A copy of `config` whose sampler runs one step, without a progress bar."""
    probe = config.copy_and_resolve_references()
    probe.sampling.accelerated_sampling, probe.sampling.N, probe.sampling.show_progress = True, 1, False
    return probe


def _peak_memory(config, reconstruct_batch, mask: torch.Tensor, batch: int, coils: int) -> int:
    """Peak CUDA memory in bytes, above what is allocated before, of one sampler step on `batch` random slices of
    `coils` coils (inputs included)."""
    device = mask.device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    shape = (batch, coils) + tuple(mask.shape[-2:])
    maps = torch.randn(shape, dtype=torch.complex64, device=device)
    y = mask * torch.randn(shape, dtype=torch.complex64, device=device)
    reconstruct_batch(y, maps, mask, list(range(batch)), run_config=_one_step(config))
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def resolve_batch_size(config, reconstruct_batch, mask: torch.Tensor, coils: int, n_slices: int) -> int:
    """`sampling.batch_size`, or for 0 (automatic) the batch for `n_slices` slices of up to `coils` coils: on CUDA
    the largest that fits `MEMORY_FRACTION` of the free memory (`fit_batch_size` on one sampler step measured at
    batches 1 and 2), on the CPU `CPU_BATCH_SIZE`; never more than `n_slices`."""
    size = int(config.sampling.batch_size)
    if size < 0:
        raise ValueError(f"sampling.batch_size={size}: give the slices per sampler run (at least 1), or 0 to choose "
                         f"it from the free memory")
    if size > 0:
        return size
    if mask.device.type != "cuda":
        size = min(CPU_BATCH_SIZE, max(n_slices, 1))
    elif n_slices <= 1:
        size = 1
    else:
        peaks = [_peak_memory(config, reconstruct_batch, mask, b, coils) for b in (1, 2)]
        torch.cuda.empty_cache()
        size = fit_batch_size(*peaks, torch.cuda.mem_get_info(mask.device)[0], n_slices)
        logging.info("one sampler step takes %.0f MiB at batch 1 and %.0f MiB at batch 2", peaks[0] / 2**20,
                     peaks[1] / 2**20)
    logging.info("sampling.batch_size=0 (automatic): %d slice(s) per batch", size)
    return size


def _finish(config, records: outputs.SliceRecords, description: str) -> dict:
    """Rank 0, every rank done: take in the ranks' rows, write the volumes and summary.json; returns the summary."""
    records.absorb_ranks()
    rows = records.finished()
    if not rows:
        raise ValueError(f"no slices were reconstructed into {records.out}; check sampling.max_slices and the test set")
    summary = summarize(config, rows, outputs.write_volumes(records.out, rows), description)
    outputs.write_json(os.path.join(records.out, "summary.json"), summary)
    return summary


def _reconstruct(config, workdir: str, ctx: Dist) -> dict:
    """`reconstruct` on one rank of `ctx` (the module docstring says who writes what)."""
    reconstruct_batch, description = build_reconstructor(config, workdir)
    mask = get_mask(config, "sample")
    dataset = datasets.make_dataset(config, "test")
    keys = [(dataset.volumes[v].name, s) for v, s in dataset.slices]
    limit = int(config.sampling.max_slices)
    wanted = range(min(limit, len(keys)) if limit > 0 else len(keys))
    out = output_folder(config, workdir)
    key = "sampling.output_dir" if config.sampling.output_dir else "--workdir"
    records = None
    with contextlib.ExitStack() as stack:
        def open_folder() -> list[int]:  # rank 0 owns the folder for the whole job
            nonlocal records
            stack.enter_context(folders.lock_folder(out, key, "reconstruction folder"))
            folders.remove_stale_temporaries(out)
            outputs.claim_output_folder(config, out)
            records = outputs.SliceRecords(out)
            records.absorb_ranks()
            return [i for i in wanted if not records.is_done(*keys[i])]

        todo = from_rank0(ctx, open_folder)
        if not ctx.is_main:
            records = outputs.SliceRecords(out, outputs.RANK_ROWS.format(ctx.rank))
        mine = todo[ctx.rank::ctx.world_size]
        coils = max(volume.kspace_shape[1] for volume in dataset.volumes)
        batch_size = resolve_batch_size(config, reconstruct_batch, mask, coils, len(mine))
        logging.info("reconstructing %s with %s into %s: %d of %d slice(s) to do%s", config.sampling.datashift,
                     description, out, len(todo), len(wanted),
                     f", {len(mine)} on rank {ctx.rank} of {ctx.world_size}" if ctx.world_size > 1 else "")
        with torch.no_grad():
            reconstruct_loader(config, reconstruct_batch, datasets.ordered_loader(dataset, config, batch_size, mine),
                               mask, records)
        if ctx.world_size > 1:
            dist.barrier()
        return from_rank0(ctx, lambda: _finish(config, records, description))


def reconstruct(config, workdir: str) -> dict:
    """Reconstruct the `sampling.datashift` test set (this process's share under torchrun); returns the summary
    (also written as summary.json)."""
    apply_tuned(config)
    ctx = init_distributed(config, timeout=RANK_WAIT)
    try:
        summary = _reconstruct(config, workdir, ctx)
    finally:
        if ctx.world_size > 1:
            dist.destroy_process_group()
    if ctx.is_main:
        logging.info("%s: %d slices, NMSE %.4f, PSNR %.2f dB, SSIM %.4f (zero-filled PSNR %.2f dB), data residual "
                     "%.4f (zero-filled %.4f), %d flagged, %.2f s/slice -> %s", summary["method"], summary["n_slices"],
                     summary["nmse"], summary["psnr"], summary["ssim"], summary["zf_psnr"], summary["residual"],
                     summary["zf_residual"], summary["n_flagged"], summary["seconds_per_slice"],
                     output_folder(config, workdir))
    return summary
