"""`main.py --mode sample`: reconstruct a test set with a diffusion sampler or a classical baseline, score it and
write the results.

Outputs, in one folder per result identity (`sampling.output_dir`, or
`<workdir>/<sampling.folder>/samples/<prefix>_<hash>`, runners/identity.py: the prefix names test set, mask,
method, SDE and steps; the hash covers every setting, the checkpoint's content, the data files and the slices):
    recon_<file>_<slice>.mat   keys recon, zero_filled, ground_truth (complex [H, W]) — one per slice; with an
                               error map (runners/uncertainty.py) also error_std, noise_std and the baseline image;
                               with K > 1 samples std and sample (sample 0), with save_samples all samples
    <file>_<slice>.png         zero-filled | reconstruction (titled with SDE, sampler and steps) | ground truth |
                               |error| with its scale (| the predicted error std); the images scored, PSNR/SSIM
                               (fastMRI convention) in the titles
    <file>.h5                  fastMRI-style `reconstruction` [slices, H, W] (magnitude, float32) and `slices`
    metrics.csv                one row per slice (`reconstructor.score_slice`): both metric conventions
                               (utils/metrics.py), the data residuals, `flagged`, seconds, NFE; the error map's
                               columns and `warn` (`uncertainty.slice_columns`); with K > 1 samples the
                               metrics of sample 0 alone (`sample_nmse`, `sample_psnr`, `sample_ssim`)
    volumes.csv                fastMRI per-volume metrics
    summary.json               means over slices, flagged and warned slices, NFE, seconds per slice, method, mask,
                               identity; with error maps the reliability diagram's numbers
    reliability.png            with error maps: observed against nominal coverage on the objects' pixels
    setting.json               the identity's fields

A slice whose data residual is far above zero-filled's is flagged (runners/reconstructor.py), one that is predicted
to be no better than it should be is warned (runners/uncertainty.py), each with a warning in the log.
`sampling.calibration` (a calibration.json of `main.py --mode calibrate`) scales the error map; it must have been
fitted for the same setting.

Every file is written atomically and the folder has one writer at a time (runners/folders.py); a second run into
it waits briefly and then stops with a line naming the process that holds it. A rerun of the same identity skips
the finished slices (complete row and readable `.mat`, runners/outputs.py) and rebuilds the volumes and the summary
from one row per slice; a folder holding another identity's results is refused (naming the fields that differ)
rather than mixed. Batch size, progress bars and the CUDA speed options are not part of the identity.

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
import dataclasses
import datetime
import logging
import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist

import datasets
from runners import build, folders, outputs, uncertainty
from runners.distributed import Dist, from_rank0, init_distributed
from runners.reconstructor import (FLAG_FACTOR, FLAG_MARGIN, Reconstructor, apply_tuned, data_residual, datashift,
                                   input_folders, object_support, sample_scores, score_slice, slice_seed)
from utils.figures import save_reliability
from utils.masks import holdout_split
from utils.mri import sense_adjoint

CPU_BATCH_SIZE = 4  # sampling.batch_size=0 on the CPU: batching gains little there (bench/README.md: 1.05× at 4)
MEMORY_FRACTION = 0.8  # sampling.batch_size=0 on CUDA: the share of the free memory the batch may fill
RANK_WAIT = datetime.timedelta(hours=24)  # how long a rank that has finished waits for the others


def output_folder(config, workdir: str, identity, split: str = "test") -> str:
    """`sampling.output_dir`, or `<workdir>/<sampling.folder>/samples/<identity name>` (validation slices:
    `<workdir>/calibrate/<identity name>`)."""
    if config.sampling.output_dir:
        return config.sampling.output_dir
    if split == "eval":
        return os.path.join(workdir, "calibrate", identity.name)
    return os.path.join(workdir, config.sampling.folder, "samples", identity.name)


def _check_sizes(mask: torch.Tensor, kspace: torch.Tensor, config) -> None:
    if tuple(mask.shape[-2:]) != tuple(kspace.shape[-2:]):
        raise ValueError(f"the sampling mask {build.mask_spec(config, 'sampling').name} is {tuple(mask.shape[-2:])} "
                         f"but the test k-space is {tuple(kspace.shape[-2:])}; set data.image_size to the data's "
                         f"size or give a mask of that size")


def reconstruct_loader(config, reconstructor: Reconstructor, loader, mask, records: outputs.SliceRecords,
                       calibration: uncertainty.Calibration | None = None) -> None:
    """Reconstruct, score (`score_slice` and the error-map columns of `uncertainty.slice_columns`, with
    `calibration` when given) and write every slice of `loader`, adding its row to `records`."""
    out = records.out
    on_support = datashift(config) == "phantom"
    opts = reconstructor.uncertainty
    for batch in loader:
        if batch is None:  # every slice of the batch was broken and skipped (data.skip_broken)
            continue
        kspace = batch["kspace"].to(config.device)
        maps = batch["maps"].to(config.device)
        _check_sizes(mask, kspace, config)
        names, indices = batch["fname"], batch["slice"].tolist()
        y = mask * kspace
        seeds = [slice_seed(config.sampling.seed, f, s) for f, s in zip(names, indices)]
        start = time.perf_counter()
        samples, nfe = reconstructor(y, maps, mask, seeds)
        recon = samples.mean(dim=1, keepdim=True)
        std = samples.abs().std(dim=1) if samples.shape[1] > 1 else None
        if recon.is_cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / len(names)
        truth = sense_adjoint(kspace, maps, 1.0)
        zero_filled = sense_adjoint(y, maps, mask)
        residuals = data_residual(recon, y, maps, mask).tolist()
        zf_residuals = data_residual(zero_filled, y, maps, mask).tolist()
        error_maps = uncertainty.batch_maps(reconstructor, samples, y, maps, mask, seeds)
        for j, (fname, index) in enumerate(zip(names, indices)):
            images = [v[j, 0].cpu().numpy() for v in (recon, zero_filled, truth)]
            magnitudes = [np.abs(v) for v in images]
            arrays = {} if std is None else {"std": std[j].cpu().numpy()}
            columns, error_std = uncertainty.slice_columns(magnitudes[0], magnitudes[2], object_support,
                                                           arrays.get("std"), error_maps, j,
                                                           reconstructor.num_samples, opts, calibration)
            row = {"fname": fname, "slice": index,
                   **score_slice(*magnitudes, residuals[j], zf_residuals[j], arrays.get("std"), on_support),
                   **columns, "seconds": seconds, "nfe": nfe}
            if std is not None:
                arrays["sample"] = samples[j, 0].cpu().numpy()
                row.update(sample_scores(np.abs(arrays["sample"]), magnitudes[2], on_support))
            if error_std is not None:
                arrays["error_std"] = error_std.astype(np.float32)
            if "var_noise" in error_maps:
                arrays["noise_std"] = np.sqrt(error_maps["var_noise"][j]).astype(np.float32)
            if "baseline" in error_maps:
                arrays["baseline"] = error_maps["baseline"][j]
            if std is not None and config.sampling.save_samples:
                arrays["samples"] = samples[j].cpu().numpy()
            outputs.write_slice(out, fname, index, *images, row, reconstructor.label, arrays)
            records.add(row)
            logging.info("%s slice %d: PSNR %.2f dB (zero-filled %.2f%s), SSIM %.4f, data residual %.4f (zero-filled "
                         "%.4f, %.2f× the noise level), %.1f s", fname, index, row["psnr"], row["zf_psnr"],
                         f", predicted {row['pred_psnr']:.2f}" if "pred_psnr" in row else "", row["ssim"],
                         row["residual"], row["zf_residual"], row["misfit"], seconds)
            uncertainty.log_warnings(fname, index, row, opts, calibration is not None)
            if row["flagged"]:
                logging.warning("%s slice %d is flagged: its data residual %.4f is far above zero-filled's %.4f "
                                "(> %g × zero-filled + %g), so the reconstruction does not fit its own measurements; "
                                "check the checkpoint and the sampler settings (sampling.snr, mse, corrector_mse)",
                                fname, index, row["residual"], row["zf_residual"], FLAG_FACTOR, FLAG_MARGIN)


def summarize(config, rows: list[dict], volumes: list[dict], reconstructor: Reconstructor, identity,
              records_folder: str, error_summary: dict | None = None) -> dict:
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    s = config.sampling
    summary = {"method": f"{config.training.sde}-{s.method}" if reconstructor.diffusion else s.method,
               "description": reconstructor.description, "mask": build.mask_spec(config, "sampling").name,
               "datashift": datashift(config), "identity": identity.name, "folder": records_folder,
               "n_slices": len(rows)}
    for key in ("nmse", "psnr", "ssim", "nmse_published", "psnr_published", "ssim_published", "zf_nmse",
                "zf_psnr", "zf_ssim", "residual", "zf_residual"):
        summary[key] = mean(key)
    summary["n_flagged"] = int(sum(r["flagged"] for r in rows))
    summary["num_samples"] = reconstructor.num_samples
    for key in outputs.POSTERIOR_FIELDS:
        if all(key in r for r in rows):
            summary[key] = float(np.nanmean([r[key] for r in rows]))
    summary.update(error_summary or {})
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


def one_step(settings):
    """`settings` of a sampler made to run one step (baseline settings unchanged)."""
    return dataclasses.replace(settings, steps=1) if hasattr(settings, "steps") else settings


def _peak_memory(reconstructor: Reconstructor, mask: torch.Tensor, batch: int, coils: int) -> int:
    """Peak CUDA memory in bytes, above what is allocated before, of one sampler step on `batch` random slices of
    `coils` coils (inputs included)."""
    device = mask.device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    shape = (batch, coils) + tuple(mask.shape[-2:])
    maps = torch.randn(shape, dtype=torch.complex64, device=device)
    y = mask * torch.randn(shape, dtype=torch.complex64, device=device)
    reconstructor(y, maps, mask, list(range(batch)), settings=one_step(reconstructor.settings))
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def resolve_batch_size(config, reconstructor: Reconstructor, mask: torch.Tensor, coils: int, n_slices: int) -> int:
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
        peaks = [_peak_memory(reconstructor, mask, b, coils) for b in (1, 2)]
        torch.cuda.empty_cache()
        size = fit_batch_size(*peaks, torch.cuda.mem_get_info(mask.device)[0], n_slices)
        logging.info("one sampler step takes %.0f MiB at batch 1 and %.0f MiB at batch 2", peaks[0] / 2**20,
                     peaks[1] / 2**20)
    logging.info("sampling.batch_size=0 (automatic): %d slice(s) per batch", size)
    return size


def _finish(config, records: outputs.SliceRecords, reconstructor: Reconstructor, identity,
            calibration: uncertainty.Calibration | None) -> dict:
    """Rank 0, every rank done: take in the ranks' rows, write the volumes, summary.json and (with error maps)
    reliability.png; returns the summary."""
    records.absorb_ranks()
    rows = records.finished()
    if not rows:
        raise ValueError(f"no slices were reconstructed into {records.out}; check sampling.max_slices and the test set")
    diagram = uncertainty.reliability(uncertainty.read_maps(records.out, rows, outputs.mat_path), object_support)
    if diagram is not None:
        state = "calibrated" if calibration is not None else "uncalibrated"
        save_reliability(os.path.join(records.out, "reliability.png"),
                         {f"{reconstructor.label} ({state})": (diagram["nominal"], diagram["observed"])},
                         f"{len(rows)} slice(s), {datashift(config)}")
    summary = summarize(config, rows, outputs.write_volumes(records.out, rows), reconstructor, identity, records.out,
                        uncertainty.summarize(rows, calibration, diagram))
    outputs.write_json(os.path.join(records.out, "summary.json"), summary)
    broken = [f"{r['fname']} slice {r['slice']}" for r in rows if not math.isfinite(r["residual"])]
    if broken:
        raise ValueError(f"{len(broken)} of {len(rows)} reconstructed slices in {records.out} are not finite "
                         f"({', '.join(broken[:3])}{' …' if len(broken) > 3 else ''}): the network or the sampler "
                         f"diverged; check the checkpoint and the sampler settings, then rerun into a new folder")
    return summary


def _reconstruct(config, workdir: str, ctx: Dist, split: str) -> dict:
    """`reconstruct` on one rank of `ctx` (the module docstring says who writes what)."""
    reconstructor = Reconstructor(config, workdir)
    mask = build.sample_mask(config)
    if reconstructor.uncertainty.cross_validate:
        # a mask with nothing to hold out is refused before any slice is reconstructed
        holdout_split(mask, reconstructor.uncertainty.cv_every)
    dataset = datasets.make_dataset(config, split)
    keys = [(dataset.volumes[v].name, s) for v, s in dataset.slices]
    limit = int(config.sampling.max_slices)
    wanted = range(min(limit, len(keys)) if limit > 0 else len(keys))
    identity = reconstructor.identity(config, dataset.volumes, [keys[i] for i in wanted], mask)
    calibration = uncertainty.load_calibration(config.sampling.calibration, identity, reconstructor.uncertainty)
    identity = uncertainty.with_calibration(identity, calibration)
    out = output_folder(config, workdir, identity, split)
    key = "sampling.output_dir" if config.sampling.output_dir else "--workdir"
    records = None
    with contextlib.ExitStack() as stack:
        def open_folder() -> list[int]:  # rank 0 owns the folder for the whole job
            nonlocal records
            folders.check_not_input(out, key, input_folders(config, reconstructor, dataset.volumes))
            stack.enter_context(folders.lock_folder(out, key, "reconstruction folder"))
            outputs.claim_output_folder(identity, out, [keys[i] for i in wanted])
            folders.remove_stale_temporaries(out)
            records = outputs.SliceRecords(out)
            records.absorb_ranks()
            return [i for i in wanted if not records.is_done(*keys[i])]

        todo = from_rank0(ctx, open_folder)
        if not ctx.is_main:
            records = outputs.SliceRecords(out, outputs.RANK_ROWS.format(ctx.rank))
        mine = todo[ctx.rank::ctx.world_size]
        coils = max(volume.kspace_shape[1] for volume in dataset.volumes)
        batch_size = resolve_batch_size(config, reconstructor, mask, coils, len(mine))
        logging.info("reconstructing %s with %s into %s: %d of %d slice(s) to do%s", config.sampling.datashift,
                     reconstructor.description, out, len(todo), len(wanted),
                     f", {len(mine)} on rank {ctx.rank} of {ctx.world_size}" if ctx.world_size > 1 else "")
        with torch.no_grad():
            reconstruct_loader(config, reconstructor, datasets.ordered_loader(dataset, config, batch_size, mine),
                               mask, records, calibration)
        if ctx.world_size > 1:
            dist.barrier()
        return from_rank0(ctx, lambda: _finish(config, records, reconstructor, identity, calibration))


def reconstruct(config, workdir: str, split: str = "test") -> dict:
    """Reconstruct the `sampling.datashift` test set (`split="eval"`: the validation set, `data.eval_root`, as
    `main.py --mode calibrate` does), this process's share under torchrun; returns the summary (also written as
    summary.json) with the output `folder`."""
    apply_tuned(config)
    ctx = init_distributed(config, timeout=RANK_WAIT)
    try:
        summary = _reconstruct(config, workdir, ctx, split)
    finally:
        if ctx.world_size > 1:
            dist.destroy_process_group()
    if ctx.is_main:
        logging.info("%s: %d slices, NMSE %.4f, PSNR %.2f dB, SSIM %.4f (zero-filled PSNR %.2f dB), data residual "
                     "%.4f (zero-filled %.4f), %d flagged, %.2f s/slice -> %s", summary["method"], summary["n_slices"],
                     summary["nmse"], summary["psnr"], summary["ssim"], summary["zf_psnr"], summary["residual"],
                     summary["zf_residual"], summary["n_flagged"], summary["seconds_per_slice"], summary["folder"])
        if summary.get("warning"):
            logging.warning("%d of %d slices are warned (runners/uncertainty.py): the reconstruction is predicted to "
                            "be no better than it should be on most of this set; compare with the classical "
                            "baselines before trusting it", summary["n_warned"], summary["n_slices"])
    return summary
