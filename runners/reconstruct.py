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
"""
from __future__ import annotations

import json
import logging
import os
import time
import zlib

import numpy as np
import torch
from scipy.ndimage import binary_fill_holes

import datasets
import sampling
import sde_lib
from baselines import BASELINES
from models import create_model, get_score_fn
from runners import folders, outputs
from utils import metrics
from utils.checkpoints import load_model_weights
from utils.common import cuda_speed_options
from utils.masks import get_mask, mask_name
from utils.mri import r2c, sense_adjoint, sense_forward

FLAG_FACTOR, FLAG_MARGIN = 2.0, 0.05
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
        parts += [config.training.sde, ckpt, s.predictor, s.corrector, f"N{steps}", f"snr{snr:g}", f"mse{s.mse:g}",
                  f"cmse{s.corrector_mse:g}", "ema" if s.use_ema else "raw", f"seed{s.seed}"]
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
    """`(fn(y, csm, mask, seeds) -> (complex images [B, K, H, W], nfe), description)` for `sampling.method`: the
    `K = sampling.num_samples` posterior samples of each slice (one image for a baseline), all slices and samples in
    one sampler batch, each sample with its own noise stream (`sampling.posterior_seeds`)."""
    method = config.sampling.method
    check_method(method)
    num_samples = int(config.sampling.num_samples)
    if num_samples < 1:
        raise ValueError(f"sampling.num_samples must be at least 1, got {num_samples}")
    if not is_diffusion(method):
        if num_samples > 1:
            raise ValueError(f"sampling.num_samples={num_samples} needs a diffusion sampler; the baseline "
                             f"{method!r} gives one image (set sampling.num_samples=1)")
        baseline = BASELINES.get(method)
        return (lambda y, csm, mask, seeds: (baseline(y, csm, mask, config), 0)), method
    sampling.PREDICTORS.get(config.sampling.predictor)
    sampling.CORRECTORS.get(config.sampling.corrector)
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

    def reconstruct_batch(y, csm, mask, seeds):
        noise = sampling.SampleNoise(sampling.posterior_seeds(seeds, num_samples), y.device)
        x, nfe = sampler(config, sde, score_fn, y.repeat_interleave(num_samples, 0),
                         csm.repeat_interleave(num_samples, 0), mask, noise, show_progress=config.sampling.show_progress)
        return r2c(x).reshape(y.shape[0], num_samples, *x.shape[-2:]), nfe

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
    """Reconstruct, score and write every slice of `loader` that `records` does not hold yet."""
    seen, limit, out = 0, config.sampling.max_slices, records.out
    phantom = _datashift(config) == "phantom"
    title = method_label(config)
    for batch in loader:
        if 0 < limit <= seen:
            break
        if batch is None:  # every slice of the batch was broken and skipped (data.skip_broken)
            continue
        keys = list(zip(batch["fname"], batch["slice"].tolist()))
        keep = [i for i, (f, s) in enumerate(keys)
                if (limit <= 0 or seen + i < limit) and not records.is_done(f, s)]
        seen += len(keys)
        if not keep:
            continue
        kspace = batch["kspace"][keep].to(config.device)
        maps = batch["maps"][keep].to(config.device)
        _check_sizes(mask, kspace, config)
        names = [batch["fname"][i] for i in keep]
        indices = [int(batch["slice"][i]) for i in keep]
        y = mask * kspace
        start = time.perf_counter()
        samples, nfe = reconstruct_batch(y, maps, mask, [slice_seed(config.sampling.seed, f, s)
                                                         for f, s in zip(names, indices)])
        recon = samples.mean(dim=1, keepdim=True)
        std = samples.abs().std(dim=1) if samples.shape[1] > 1 else None
        if recon.is_cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / len(keep)
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


def reconstruct(config, workdir: str) -> dict:
    """Reconstruct the `sampling.datashift` test set; returns the summary (also written as summary.json)."""
    apply_tuned(config)
    reconstruct_batch, description = build_reconstructor(config, workdir)
    mask = get_mask(config, "sample")
    loader = datasets.get_dataset(config, "test")
    out = output_folder(config, workdir)
    key = "sampling.output_dir" if config.sampling.output_dir else "--workdir"
    with folders.lock_folder(out, key, "reconstruction folder"):
        folders.remove_stale_temporaries(out)
        outputs.claim_output_folder(config, out)
        records = outputs.SliceRecords(out)
        logging.info("reconstructing %s with %s into %s", config.sampling.datashift, description, out)
        with torch.no_grad():
            reconstruct_loader(config, reconstruct_batch, loader, mask, records)
        rows = records.finished()
        if not rows:
            raise ValueError(f"no slices were reconstructed into {out}; check sampling.max_slices and the test set")
        summary = summarize(config, rows, outputs.write_volumes(out, rows), description)
        outputs.write_json(os.path.join(out, "summary.json"), summary)
    logging.info("%s: %d slices, NMSE %.4f, PSNR %.2f dB, SSIM %.4f (zero-filled PSNR %.2f dB), data residual %.4f "
                 "(zero-filled %.4f), %d flagged, %.2f s/slice -> %s", summary["method"], summary["n_slices"],
                 summary["nmse"], summary["psnr"], summary["ssim"], summary["zf_psnr"], summary["residual"],
                 summary["zf_residual"], summary["n_flagged"], summary["seconds_per_slice"], out)
    return summary
