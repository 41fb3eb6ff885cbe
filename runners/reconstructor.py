"""The reconstructor that `main.py --mode sample` (runners/reconstruct.py) and `--mode tune` (runners/tune.py) share:
the method of `sampling.method` with its resolved settings, the result identity, and `score_slice`, the metrics row
of one slice.

Data residual: `‖M(F S x) − y‖ / ‖y‖` of the reconstruction `x` against the measured k-space `y` (no ground truth
needed), `zf_residual` the same for the zero-filled image. A slice whose residual exceeds
`FLAG_FACTOR × zf_residual + FLAG_MARGIN` (2× + 0.05) does not fit its own measurements (a sampler that diverged,
a checkpoint of another setting): it is flagged (`flagged` = 1).
"""
from __future__ import annotations

import json
import logging
import os
import zlib

import numpy as np
import torch
from scipy.ndimage import binary_fill_holes

import datasets
import sampling
from models import get_score_fn
from runners import build, uncertainty
from runners.identity import Identity, array_digest, data_fields, file_digest, jsonable
from utils import metrics
from utils.checkpoints import load_model_weights
from utils.mri import r2c, sense_forward

FLAG_FACTOR, FLAG_MARGIN = 2.0, 0.05


def datashift(config) -> str:
    """`sampling.datashift` with the published alias (`photom`) resolved."""
    return datasets.DATASHIFT_ALIASES.get(config.sampling.datashift, config.sampling.datashift)


def apply_tuned(config) -> None:
    """Set the values of `sampling.tuned` (a `best.json` of `main.py --mode tune`) into `config.sampling`; no-op when
    empty."""
    path = config.sampling.tuned
    if not path:
        return
    try:
        with open(path) as f:
            values = json.load(f)["sampling"]
        unknown = sorted(set(values) - set(config.sampling.keys()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"sampling.tuned={path}: not a readable best.json of `main.py --mode tune` ({err})") from err
    if unknown:
        raise ValueError(f"sampling.tuned={path} sets unknown sampling keys {unknown}")
    for key, value in values.items():
        try:
            config.sampling[key] = value
        except TypeError:
            raise ValueError(f"sampling.tuned={path} sets sampling.{key}={value!r}, not a "
                             f"{type(config.sampling[key]).__name__}; use a best.json written by `main.py --mode "
                             f"tune`") from None


def checkpoint_path(config, workdir: str) -> str:
    """`sampling.checkpoint`, or `<workdir>/<sampling.folder>/checkpoints/checkpoint_<sampling.ckpt>.pth`."""
    s = config.sampling
    path = s.checkpoint or os.path.join(workdir, s.folder, "checkpoints", f"checkpoint_{s.ckpt}.pth")
    if not os.path.isfile(path):
        where = "" if os.path.isabs(path) else (f" (a relative path is read from the current folder, {os.getcwd()}: "
                                                f"run from the repository root, or give an absolute path)")
        raise FileNotFoundError(
            f"no checkpoint at {path}. Train one with `bash train_fastMRI.sh {config.training.sde}` (it writes "
            f"<workdir>/<run>/checkpoints/checkpoint_<epoch>.pth), then pass --config.sampling.folder=<run> "
            f"--config.sampling.ckpt=<epoch>; put published weights at "
            f"{os.path.join(workdir, '<folder>', 'checkpoints', 'checkpoint_190.pth')}; or give any file with "
            f"--config.sampling.checkpoint=<path>{where}")
    return path


def slice_seed(base: int, fname: str, index: int) -> int:
    """Noise seed of one slice: independent of batch composition and order."""
    return (base * 1_000_003 + zlib.crc32(f"{fname}:{index}".encode())) % 2**63


def input_folders(config, reconstructor: "Reconstructor", volumes) -> dict[str, str]:
    """`{folder: what}` of every input of a run: the k-space and maps folders of `volumes` (`datasets.Volume`s), the
    mask folder and the checkpoint's folder (runners/folders.check_not_input keeps outputs out of them)."""
    inputs = {os.path.dirname(os.path.abspath(v.kspace_path)): "k-space" for v in volumes}
    inputs.update({os.path.dirname(os.path.abspath(v.maps_path)): "coil maps" for v in volumes})
    if config.data.mask_root:
        inputs[os.path.abspath(config.data.mask_root)] = "mask (data.mask_root)"
    if reconstructor.checkpoint:
        inputs[os.path.dirname(os.path.abspath(reconstructor.checkpoint))] = "checkpoint"
    return inputs


class Reconstructor:
    """The method of `sampling.method`, resolved once from the config.

    `reconstructor(y, csm, mask, seeds, settings=None) -> (complex images [B, K, H, W], network evaluations per
    slice)`: the `K = sampling.num_samples` posterior samples of each slice (one image for a baseline), all slices
    and samples in one sampler batch, each sample with its own noise stream (`sampling.posterior_seeds`);
    `settings` replaces the method's resolved settings for this call (a tuning trial, the one-step batch probe).
    `y` is the masked k-space and `csm` the maps, complex `[B, C, H, W]`; `seeds` one per slice.
    """

    def __init__(self, config, workdir: str):
        self.method = config.sampling.method
        self.entry = build.METHODS.entry(self.method)
        self.settings = build.method_settings(config)
        self.diffusion = self.entry.kind == "diffusion"
        self.num_samples = int(config.sampling.num_samples) if self.diffusion else 1
        if int(config.sampling.num_samples) < 1:
            raise ValueError(f"sampling.num_samples must be at least 1, got {config.sampling.num_samples}")
        self.show_progress = bool(config.sampling.show_progress)
        self.label = self.entry.label
        self.description = self.method
        self.checkpoint = self.checkpoint_sha = ""
        self.uncertainty = uncertainty.options(config)
        self.baseline = None  # (entry, settings) of `sampling.warn_baseline`
        if self.uncertainty.warn_baseline:
            name = self.uncertainty.warn_baseline
            self.baseline = (build.METHODS.entry(name), build.method_settings(config, name))
        if not self.diffusion:
            return
        self.sde = build.make_sde(config)
        model = build.create_model(config)
        self.checkpoint = checkpoint_path(config, workdir)
        self.checkpoint_sha = file_digest(self.checkpoint)
        step = load_model_weights(self.checkpoint, model, config.sampling.use_ema, config.device,
                                  build.checkpoint_record(config))
        model.eval()
        bf16, compile_ = build.speed_options(config, "sampling")
        self.score_fn = get_score_fn(self.sde, torch.compile(model) if compile_ else model, train=False,
                                     continuous=config.training.continuous, bf16=bf16)
        self.label = method_label(config)
        self.description = f"{self.method} with {self.checkpoint} (step {step})"
        _check_low_frequencies_measured(config, self.sde)

    def __call__(self, y, csm, mask, seeds, settings=None, num_samples: int | None = None):
        settings = self.settings if settings is None else settings
        if not self.diffusion:
            return self.entry.item(y, csm, mask, settings), 0  # one image: [B, 1, H, W]
        k = self.num_samples if num_samples is None else num_samples
        noise = sampling.SampleNoise(sampling.posterior_seeds(seeds, k), y.device)
        x, nfe = self.entry.item(self.score_fn, self.sde, y.repeat_interleave(k, 0), csm.repeat_interleave(k, 0),
                                 mask, settings, noise, show_progress=self.show_progress)
        return r2c(x).reshape(y.shape[0], k, *x.shape[-2:]), nfe * k  # evaluations per slice

    def noise_response(self, csm, mask, sigma):
        """The method's response to a change `ν` of its measured k-space, `ν [B, C, H, W] ↦ δ [B, 1, H, W]`
        (complex; `runners/uncertainty.py`), for maps `csm` `[B, C, H, W]` and noise levels σ̂ `sigma` `[B]`; None
        for a method without one (ℓ1-wavelet)."""
        if self.diffusion:
            return lambda nu: sampling.data_response(self.settings, self.sde, nu, csm, mask, sigma)
        if self.method in uncertainty.LINEAR_BASELINES:
            return lambda nu: self.entry.item(nu, csm, mask, self.settings)
        return None

    def identity(self, config, volumes, slices, mask: torch.Tensor, exclude: tuple[str, ...] = ()) -> Identity:
        """The identity (runners/identity.py) of this method's result on `slices` (`(file, slice)` pairs) of the
        set `volumes` with the sampling `mask`; `exclude` leaves settings fields out (the tuner's searched keys)."""
        spec = build.mask_spec(config, "sampling")
        settings = {k: v for k, v in jsonable(self.settings).items() if k not in exclude}
        fields = {"method": self.method, "settings": settings, "datashift": datashift(config),
                  "mask": {**jsonable(spec), "root": None, "values": array_digest(mask.cpu())},
                  "data": data_fields(config, volumes), "slices": [[str(f), int(s)] for f, s in slices]}
        parts = [datashift(config), spec.name, self.method]
        if self.diffusion:
            s = config.sampling
            fields.update(sde=build.sde_params(config), network=build.checkpoint_record(config),
                          checkpoint=self.checkpoint_sha, use_ema=bool(s.use_ema), num_samples=self.num_samples,
                          seed=int(s.seed), save_samples=bool(s.save_samples))
            parts += [str(config.training.sde), f"N{self.settings.steps}"]
        extra = uncertainty.identity_fields(self.uncertainty, self.baseline[1] if self.baseline else None)
        if extra is not None:
            fields["uncertainty"] = extra
        return Identity("_".join(parts), jsonable(fields))


def method_label(config) -> str:
    """The method as a figure title: `HFS-SDE PC, 100 steps` for a diffusion sampler (`..., mean of 4 samples` with
    posterior samples), `CG-SENSE` for a baseline (labels from the registries)."""
    entry = build.METHODS.entry(config.sampling.method)
    if entry.kind != "diffusion":
        return entry.label
    samples = config.sampling.num_samples
    mean = f", mean of {samples} samples" if samples > 1 else ""
    return f"{build.sde_label(config)} {entry.label}, {build.sampling_schedule(config)[0]} steps{mean}"


def _check_low_frequencies_measured(config, sde) -> None:
    if sde.lowfreq_mask is None:
        return
    missing = int(((sde.lowfreq_mask > 0) & (build.sample_mask(config) == 0)).sum())
    if missing:
        logging.warning("the sampling mask %s leaves %d samples of the low-frequency region (training.mask_type="
                        "%s, training.acs=%s) unmeasured; HFS-SDE keeps that region from the data, so raise "
                        "sampling.acs to at least training.acs", build.mask_spec(config, "sampling").name, missing,
                        config.training.mask_type, config.training.acs)


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


def object_support(truth: np.ndarray) -> np.ndarray:
    """Support of the object (magnitude above 2 % of its maximum, holes filled): the region of the published metrics
    on the phantom set and of the posterior calibration figures."""
    return binary_fill_holes(truth > 0.02 * truth.max())


def sample_scores(sample: np.ndarray, truth: np.ndarray, on_support: bool = False) -> dict:
    """`sample_nmse`, `sample_psnr`, `sample_ssim`: the metrics of one posterior sample's magnitude `[H, W]` in the
    convention of `score_slice`."""
    scores = metrics.evaluate(truth, sample, support=object_support(truth) if on_support else None)
    return {f"sample_{k}": scores[k] for k in ("nmse", "psnr", "ssim")}


def score_slice(recon: np.ndarray, zero_filled: np.ndarray, truth: np.ndarray, residual: float, zf_residual: float,
                std: np.ndarray | None = None, on_support: bool = False) -> dict:
    """The metrics of one slice from its magnitude images `[H, W]`: both conventions of the reconstruction
    (`utils/metrics.evaluate`; the published one on the object support with `on_support`, as on the phantom set),
    zero-filled's NMSE/PSNR/SSIM (`zf_*`), the data residuals and `flagged`; with a posterior `std` map the
    calibration columns (`utils/metrics.calibration` on the object support)."""
    row = {**metrics.evaluate(truth, recon, support=object_support(truth) if on_support else None),
           **{f"zf_{k}": v for k, v in metrics.evaluate(truth, zero_filled).items() if k in ("nmse", "psnr", "ssim")},
           "residual": float(residual), "zf_residual": float(zf_residual),
           "flagged": int(is_flagged(residual, zf_residual))}
    if std is not None:
        row.update(metrics.calibration(truth, recon, std, object_support(truth)))
    return row
