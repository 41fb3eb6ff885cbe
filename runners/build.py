"""Where the config stops: the runners resolve it here, once, into the objects and frozen settings that the
library takes (`sampling`, `sde_lib`, `baselines`, `losses`, `models`, `utils` never read a config).

- `METHODS`: every `sampling.method`, the diffusion samplers (`sampling.SAMPLERS`) and the classical baselines
  (`baselines.BASELINES`) in one registry; each entry carries its label, kind ("diffusion" or "baseline") and
  settings class, and `method_settings` fills that class from `sampling.*` by field name.
- `make_sde`, `sde_params`: the forward SDE of `training.sde` and the numbers that define it.
- `mask_spec` / `sample_mask` / `lowfreq_mask`: the sampling mask (`sampling.*`) and HFS-SDE's low-frequency mask
  (`training.*`) on the config's device.
- `create_model`, `make_optimizer`, `make_optimize_fn`, `checkpoint_record`, `speed_options`: training and loading.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

import baselines
import sampling
import sde_lib
from losses import get_optimizer, optimization_manager
from models import MODELS
from utils.common import Registry, check_setting, cuda_speed_options, finite_above
from utils.masks import MaskSpec, get_mask

METHODS = Registry.union("sampling.method", sampling.SAMPLERS, baselines.BASELINES)

# Config keys that shape a network's weights, recorded in training checkpoints (utils/checkpoints.py) and compared
# on loading; then the keys of each SDE's schedule (and HFS-SDE's low-frequency mask).
SHAPING_KEYS = ("training.sde", "training.continuous", "model.name", "model.num_scales", "model.nf", "model.ch_mult",
                "model.num_res_blocks", "model.attn_resolutions", "model.conditional", "model.scale_by_sigma",
                "data.image_size", "data.num_channels", "data.normalize_type", "data.normalize_coeff")
_SDE_KEYS = {"hfssde": ("model.beta_min", "model.beta_max", "training.mask_type", "training.acs",
                        "training.mean_equal"),
             "vpsde": ("model.beta_min", "model.beta_max"), "subvpsde": ("model.beta_min", "model.beta_max"),
             "vesde": ("model.sigma_min", "model.sigma_max")}


def is_diffusion(method: str) -> bool:
    """Whether `sampling.method` names a diffusion sampler (it needs a checkpoint) rather than a baseline."""
    return METHODS.entry(method).kind == "diffusion"


def sampling_schedule(config) -> tuple[int, float]:
    """`(steps, snr)`: `sampling.N` and `sampling.snr_accelerated` with accelerated sampling, else
    `model.num_scales` (the SDE's N) and `sampling.snr`."""
    if config.sampling.accelerated_sampling:
        return int(config.sampling.N), float(config.sampling.snr_accelerated)
    return int(config.model.num_scales), float(config.sampling.snr)


def method_settings(config, method: str | None = None) -> Any:
    """The frozen settings object of `method` (default `sampling.method`), validated by its class: every field is
    the `sampling.*` key of its name, except `steps` and `snr`, which come from `sampling_schedule` and are checked
    here, naming the key they came from."""
    cls = METHODS.entry(method or config.sampling.method).settings
    steps, snr = sampling_schedule(config)
    schedule = {"steps": steps, "snr": snr}
    names = {f.name for f in dataclasses.fields(cls)}
    accelerated = bool(config.sampling.accelerated_sampling)
    if "steps" in names:
        check_setting("sampling.N" if accelerated else "model.num_scales", steps, steps >= 1, "at least 1 step")
    if "snr" in names:
        check_setting("sampling.snr_accelerated" if accelerated else "sampling.snr", snr, finite_above(snr, 0),
                      "a finite number > 0")
    values = {f.name: schedule[f.name] if f.name in schedule else config.sampling[f.name]
              for f in dataclasses.fields(cls)}
    return cls(**values)


def mask_spec(config, group: str) -> MaskSpec:
    """The mask chosen by `<group>.mask_type/acc/acs` (`group` "sampling" or "training") at `data.image_size`."""
    keys = config[group]
    return MaskSpec(keys.mask_type, keys.acc, int(keys.acs), int(config.data.image_size), config.data.mask_root,
                    int(config.sampling.mask_seed), group)


def sample_mask(config) -> torch.Tensor:
    """The sampling mask `[1, 1, H, W]` (float32) on `config.device`."""
    return get_mask(mask_spec(config, "sampling")).to(config.device)


def lowfreq_mask(config) -> torch.Tensor:
    """HFS-SDE's low-frequency mask `M_lf` `[1, 1, H, W]` (float32, from `training.*`) on `config.device`."""
    return get_mask(mask_spec(config, "training")).to(config.device)


def sde_label(config) -> str:
    """The label of `training.sde` (e.g. `HFS-SDE`)."""
    return sde_lib.SDES.entry(str(config.training.sde).lower()).label


def sde_params(config) -> dict:
    """`{"name": training.sde, ...}`: the numbers that define the SDE (for HFS-SDE its low-frequency mask spec)."""
    name = str(config.training.sde).lower()
    sde_lib.SDES.entry(name)
    m = config.model
    if name == "vesde":
        return {"name": name, "sigma_min": m.sigma_min, "sigma_max": m.sigma_max, "num_scales": m.num_scales}
    params = {"name": name, "beta_min": m.beta_min, "beta_max": m.beta_max, "num_scales": m.num_scales}
    if name == "hfssde":
        spec = mask_spec(config, "training")
        params.update(mean_equal=config.training.mean_equal, lowfreq_mask=spec.name, mask_size=spec.size)
    return params


def make_sde(config) -> sde_lib.SDE:
    """The forward SDE named by `training.sde` (hfssde, vpsde, vesde, subvpsde), built from `sde_params`."""
    params = sde_params(config)
    cls = sde_lib.SDES.get(params.pop("name"))
    if cls is sde_lib.HFS_SDE:
        params.pop("lowfreq_mask"), params.pop("mask_size")
        return cls(lowfreq_mask=lowfreq_mask(config), **params)
    return cls(**params)


def create_model(config) -> torch.nn.Module:
    """The network named by `model.name` on `config.device` (no DataParallel wrapper)."""
    return MODELS.get(config.model.name).from_config(config).to(config.device)


def make_optimizer(config, params) -> torch.optim.Optimizer:
    """The optimiser of `optim.*` over `params`."""
    o = config.optim
    return get_optimizer(o.optimizer, params, lr=o.lr, beta1=o.beta1, eps=o.eps, weight_decay=o.weight_decay)


def make_optimize_fn(config):
    """`losses.optimization_manager` with `optim.lr`, `optim.warmup` and `optim.grad_clip`."""
    return optimization_manager(config.optim.lr, config.optim.warmup, config.optim.grad_clip)


def checkpoint_record(config) -> dict[str, Any]:
    """The values of `SHAPING_KEYS` and the SDE's schedule keys in `config` (tuples as lists), for a checkpoint's
    `config` entry and the check on loading."""
    record = {}
    for key in SHAPING_KEYS + _SDE_KEYS.get(str(config.training.sde).lower(), ()):
        group, name = key.split(".")
        if group in config and name in config[group]:
            value = config[group][name]
            record[key] = list(value) if isinstance(value, tuple) else value
    return record


def speed_options(config, group: str) -> tuple[bool, bool]:
    """`(bf16, compile)` of `<group>.bf16/compile`, off (with a warning) when `config.device` is not CUDA."""
    return cuda_speed_options(config.device, group, config[group].bf16, config[group].compile)
