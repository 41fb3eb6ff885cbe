"""DDPM score U-Net (Ho et al. 2020) with the checkpoint layout of score_sde_pytorch / HFS-SDE.

All layers live in one flat `all_modules` ModuleList, in the order they are used:
  time embedding Dense ×2 (when conditional) · input conv ·
  per level: `num_res_blocks` × (ResnetBlock [+ AttnBlock]), Downsample except at the last level ·
  middle: ResnetBlock, AttnBlock, ResnetBlock ·
  per level, coarsest first: `num_res_blocks + 1` × ResnetBlock on [h, skip], [AttnBlock], Upsample except at
  the finest level · GroupNorm · output conv.
A `sigmas` buffer (`exp(linspace(log σ_max, log σ_min, num_scales))`) completes the published `state_dict`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models import MODELS
from models.layers import (AttnBlock, Downsample, ResnetBlockDDPM, Upsample, ddpm_conv3x3, ddpm_linear, get_act,
                           get_timestep_embedding)
from models.normalization import NUM_GROUPS, get_normalization
from utils.common import append_dims


def get_sigmas(sigma_min: float, sigma_max: float, num_scales: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The SMLD noise levels `[num_scales]`, from `sigma_max` down to `sigma_min` (geometric)."""
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), num_scales, dtype=torch.float64)
    return torch.exp(log_sigmas).to(dtype)


def check_levels(ch_mult: tuple[int, ...], size: int) -> None:
    """Reject a `model.ch_mult` that is empty or whose levels do not divide `data.image_size`."""
    if not ch_mult:
        raise ValueError("model.ch_mult is empty; give one channel multiplier per resolution, e.g. (1, 2, 2, 2)")
    factor = 2 ** (len(ch_mult) - 1)
    if size % factor:
        raise ValueError(f"data.image_size={size} is not divisible by {factor}, which model.ch_mult={ch_mult} "
                         f"({len(ch_mult)} resolutions) needs; change the image size or use fewer levels")


def _check_shape(nf: int, ch_mult: tuple[int, ...], size: int) -> None:
    """Reject model settings the DDPM network cannot be built with, naming the key to change."""
    if nf % NUM_GROUPS:
        raise ValueError(f"model.nf={nf}: the DDPM network normalises with {NUM_GROUPS}-group GroupNorm, "
                         f"so model.nf must be a multiple of {NUM_GROUPS}")
    check_levels(ch_mult, size)


@MODELS.register("ddpm")
class DDPM(nn.Module):
    """Time-conditional score network `s(x, σ)`: `[B, C, H, W]`, labels `[B]` → score `[B, C, H, W]`.

    Built from keyword arguments named like their config keys: `model.{nf, ch_mult, num_res_blocks,
    attn_resolutions, dropout, resamp_with_conv, conditional, nonlinearity, normalization, scale_by_sigma,
    sigma_min, sigma_max, num_scales}` and `data.{image_size, num_channels, centered}`; `DDPM.from_config(config)`
    reads them from a config.

    Faithful to the published code:
      * `data.centered=False` (the published fastMRI setting) feeds the network `2x − 1`, the [0, 1] → [−1, 1]
        map of natural-image code, although MRI images are not in [0, 1]. It is a fixed affine input map that
        the published weights were trained with, so it is kept.
      * Attention runs at the levels whose resolution `data.image_size / 2^level` is in `attn_resolutions`
        (with 320 and (16,) only the middle block attends). The levels are fixed at construction, so inputs of
        another size divisible by `2^(levels − 1)` also run.
      * `model.scale_by_sigma=True` divides the output by the label. The published code indexed `sigmas` with
        `labels.long()`, which for continuous labels (the marginal std, mostly < 1) picks `σ_max`; with
        continuous labels the label is the noise level itself, so we divide by it.
      * `model.conditional=False` builds the network without the time-embedding layers and `Dense_0`
        (score_sde kept them; HFS-SDE's code fails to build).
    """

    CONFIG_KEYS = {"model": ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv",
                             "conditional", "nonlinearity", "normalization", "scale_by_sigma", "sigma_min",
                             "sigma_max", "num_scales"),
                   "data": ("image_size", "num_channels", "centered")}

    @classmethod
    def from_config(cls, config) -> "DDPM":
        """The network of `config` (the keys of `CONFIG_KEYS`): the published constructor call."""
        return cls(**{key: config[group][key] for group, keys in cls.CONFIG_KEYS.items() for key in keys})

    def __init__(self, *, nf: int, ch_mult, num_res_blocks: int, attn_resolutions, dropout: float,
                 resamp_with_conv: bool, conditional: bool, nonlinearity: str, normalization: str,
                 scale_by_sigma: bool, sigma_min: float, sigma_max: float, num_scales: int, image_size: int,
                 num_channels: int, centered: bool):
        super().__init__()
        ch_mult = tuple(ch_mult)
        _check_shape(nf, ch_mult, image_size)
        self.register_buffer("sigmas", get_sigmas(sigma_min, sigma_max, num_scales))
        self.act = act = get_act(nonlinearity)
        norm = get_normalization(normalization)
        self.nf = nf
        self.num_res_blocks = num_res_blocks
        self.num_resolutions = num_resolutions = len(ch_mult)
        self.all_resolutions = [image_size // 2 ** i for i in range(num_resolutions)]
        self.attn_levels = [res in tuple(attn_resolutions) for res in self.all_resolutions]
        self.conditional = conditional
        self.centered = centered
        self.scale_by_sigma = scale_by_sigma
        with_conv = resamp_with_conv
        channels = num_channels

        temb_dim = 4 * nf if self.conditional else None

        def resnet(in_ch: int, out_ch: int | None = None) -> ResnetBlockDDPM:
            return ResnetBlockDDPM(act, in_ch, out_ch, temb_dim=temb_dim, dropout=dropout, norm=norm)

        modules: list[nn.Module] = []
        if self.conditional:
            modules += [ddpm_linear(nf, 4 * nf), ddpm_linear(4 * nf, 4 * nf)]

        # Encoder; `skip_channels` records the channels of every tensor kept for the decoder.
        modules.append(ddpm_conv3x3(channels, nf))
        skip_channels = [nf]
        in_ch = nf
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                modules.append(resnet(in_ch, nf * mult))
                in_ch = nf * mult
                if self.attn_levels[level]:
                    modules.append(AttnBlock(in_ch, norm))
                skip_channels.append(in_ch)
            if level != num_resolutions - 1:
                modules.append(Downsample(in_ch, with_conv))
                skip_channels.append(in_ch)

        # Middle.
        modules += [resnet(in_ch), AttnBlock(in_ch, norm), resnet(in_ch)]

        # Decoder: one block more per level than the encoder, each consuming one skip tensor.
        for level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                modules.append(resnet(in_ch + skip_channels.pop(), nf * ch_mult[level]))
                in_ch = nf * ch_mult[level]
            if self.attn_levels[level]:
                modules.append(AttnBlock(in_ch, norm))
            if level != 0:
                modules.append(Upsample(in_ch, with_conv))

        modules += [norm(in_ch), ddpm_conv3x3(in_ch, channels, init_scale=0.0)]
        self.all_modules = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Score `[B, C, H, W]` of `x` `[B, C, H, W]` at noise labels `[B]` (the marginal std of the SDE)."""
        factor = 2 ** (self.num_resolutions - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {factor} for this network")
        blocks = iter(self.all_modules)

        temb = None
        if self.conditional:
            temb = next(blocks)(get_timestep_embedding(labels, self.nf))
            temb = next(blocks)(self.act(temb))

        h = x if self.centered else 2 * x - 1.0

        # Encoder.
        hs = [next(blocks)(h)]
        for level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(blocks)(hs[-1], temb)
                if self.attn_levels[level]:
                    h = next(blocks)(h)
                hs.append(h)
            if level != self.num_resolutions - 1:
                hs.append(next(blocks)(hs[-1]))

        # Middle.
        h = next(blocks)(hs[-1], temb)
        h = next(blocks)(h)
        h = next(blocks)(h, temb)

        # Decoder.
        for level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(blocks)(torch.cat([h, hs.pop()], dim=1), temb)
            if self.attn_levels[level]:
                h = next(blocks)(h)
            if level != 0:
                h = next(blocks)(h)

        h = self.act(next(blocks)(h))
        h = next(blocks)(h)

        if self.scale_by_sigma:
            h = h / append_dims(labels, h.ndim)
        return h
