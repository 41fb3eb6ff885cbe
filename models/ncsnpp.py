"""NCSN++ score network (Song et al. 2021, "Score-Based Generative Modeling through SDEs") with the checkpoint layout
of score_sde_pytorch, the network of score_sde and of score-MRI (Chung & Ye 2022).

All layers live in one flat `all_modules` ModuleList, in the order they are used:
  [Fourier projection `W`] · time embedding Dense ×2 · input conv ·
  per level: `num_res_blocks` × (ResnetBlock [+ AttnBlock]), then except at the last level a downsampling layer
  (a `down` BigGAN block, or Downsample for `ddpm` blocks) [+ Combine (`input_skip`) or a convolutional
  downsampling of the input pyramid (`residual`)] ·
  middle: ResnetBlock, AttnBlock, ResnetBlock ·
  per level, coarsest first: `num_res_blocks + 1` × ResnetBlock on [h, skip], [AttnBlock],
  [output pyramid: GroupNorm + conv (`output_skip`, or `residual` at the coarsest level) or a convolutional
  upsampling of the pyramid (`residual`)], then except at the finest level an upsampling layer ·
  GroupNorm · output conv (except with `output_skip`, whose pyramid is the output).
A `sigmas` buffer (float64, `num_scales` noise levels) completes the published `state_dict`; the parameter-free
pyramid resamplers and the FIR taps hold nothing in it. Names and shapes are score_sde's, so its checkpoints (and
score-MRI's) load with `strict=True`.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from models import MODELS
from models.ddpm import DDPM, check_levels, get_sigmas
from models.layers import AttnBlock, ResnetBlockDDPM, ddpm_conv3x3, ddpm_linear, get_act, get_timestep_embedding, \
    residual_sum
from models.layerspp import (Combine, GaussianFourierProjection, ResnetBlockBigGAN, ncsnpp_group_norm,
                             resample_layer)
from models.normalization import get_normalization
from utils.common import append_dims

CHOICES = {
    "resblock_type": ("ddpm", "biggan"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "embedding_type": ("fourier", "positional"),
}


def _check_choices(options: dict[str, str]) -> dict[str, str]:
    """The lower-cased NCSN++ choices of `options` (name → value); an unknown value names its config key."""
    choices = {}
    for key, allowed in CHOICES.items():
        value = str(options[key]).lower()
        if value not in allowed:
            raise ValueError(f"model.{key}={options[key]!r} is unknown for NCSN++; choose one of {allowed}")
        choices[key] = value
    return choices


@MODELS.register("ncsnpp")
class NCSNpp(nn.Module):
    """Time-conditional score network `s(x, σ)`: `[B, C, H, W]`, labels `[B]` → score `[B, C, H, W]`.

    Built from keyword arguments named like their config keys (`CONFIG_KEYS`: those of the DDPM network and
    `model.{fir, fir_kernel, skip_rescale, resblock_type, progressive, progressive_input, progressive_combine,
    embedding_type, init_scale, fourier_scale}`); `NCSNpp.from_config(config)` reads them from a config.

    The labels are the marginal std of the SDE at `t` for every SDE (this project's convention, score_sde's and
    score-MRI's for VE-SDE): `embedding_type='fourier'` embeds `log σ` with Gaussian Fourier features
    (`fourier_scale`), `'positional'` embeds `σ` with DDPM's sinusoids. The output is the score; with
    `scale_by_sigma` the last layer's output is divided by the label. score_sde's VP/subVP checkpoints were trained
    on the labels `999·t` with the output `−σ·score`: they load, but score another convention.

    Where score_sde_pytorch differs or cannot run (it runs 96 of the 288 combinations of block type, the two
    pyramids, combine method, `fir`, `resamp_with_conv` and embedding; all run here, and equal its output where it
    runs and where its three upsampling bugs are fixed):
      * FIR upsampling fused with a convolution (`resblock_type='ddpm'` with `fir` and `resamp_with_conv`, and every
        `progressive='residual'` network with `fir`) crashes there (a negative-step slice, then a 4-element
        stride); here it is StyleGAN2's transposed convolution with the flipped weight followed by the FIR filter
        (= FIR upsampling, then the 3×3 convolution).
      * Non-FIR upsampling (`ddpm` blocks or `progressive='residual'` without `fir`) crashes there on a bad
        `F.interpolate` call; here it is nearest-neighbour ×2 upsampling (then the 3×3 `Conv_0` with
        `resamp_with_conv`).
      * `scale_by_sigma` with positional embedding divided by `sigmas[labels.long()]` there (`σ_max` for labels
        below 1); here it divides by the label, the noise level itself.
      * Attention runs at the levels whose resolution `data.image_size / 2^level` is in `attn_resolutions`, fixed
        at construction (score_sde tests the width of the tensor at run time: the same for inputs of the
        configured size).
      * `conditional=False` builds no time-embedding layers, Fourier projection or `Dense_0` (score_sde keeps them
        unused).
    """

    CONFIG_KEYS = {"model": DDPM.CONFIG_KEYS["model"] + (
        "fir", "fir_kernel", "skip_rescale", "resblock_type", "progressive", "progressive_input",
        "progressive_combine", "embedding_type", "init_scale", "fourier_scale"),
                   "data": DDPM.CONFIG_KEYS["data"]}

    @classmethod
    def from_config(cls, config) -> "NCSNpp":
        """The network of `config` (the keys of `CONFIG_KEYS`): the published constructor call."""
        return cls(**{key: config[group][key] for group, keys in cls.CONFIG_KEYS.items() for key in keys})

    def __init__(self, *, nf: int, ch_mult, num_res_blocks: int, attn_resolutions, dropout: float,
                 resamp_with_conv: bool, conditional: bool, nonlinearity: str, normalization: str,
                 scale_by_sigma: bool, sigma_min: float, sigma_max: float, num_scales: int, fir: bool, fir_kernel,
                 skip_rescale: bool, resblock_type: str, progressive: str, progressive_input: str,
                 progressive_combine: str, embedding_type: str, init_scale: float, fourier_scale: float,
                 image_size: int, num_channels: int, centered: bool):
        super().__init__()
        options = _check_choices({"resblock_type": resblock_type, "progressive": progressive,
                                  "progressive_input": progressive_input, "progressive_combine": progressive_combine,
                                  "embedding_type": embedding_type})
        ch_mult, fir_kernel = tuple(ch_mult), tuple(fir_kernel)
        get_normalization(normalization)
        check_levels(ch_mult, image_size)
        self.register_buffer("sigmas", get_sigmas(sigma_min, sigma_max, num_scales, dtype=torch.float64))
        self.act = act = get_act(nonlinearity)
        self.nf = nf
        self.num_res_blocks = num_res_blocks
        self.num_resolutions = num_resolutions = len(ch_mult)
        resolutions = [image_size // 2 ** i for i in range(num_resolutions)]
        self.attn_levels = [res in tuple(attn_resolutions) for res in resolutions]
        self.conditional = conditional
        self.centered = centered
        self.scale_by_sigma = scale_by_sigma
        self.skip_rescale = skip_rescale
        self.resblock_type = options["resblock_type"]
        self.progressive = progressive = options["progressive"]
        self.progressive_input = progressive_input = options["progressive_input"]
        self.embedding_type = options["embedding_type"]
        combine_method = options["progressive_combine"]
        channels = num_channels
        temb_dim = 4 * nf if self.conditional else None

        def resnet(in_ch: int, out_ch: int | None = None, up: bool = False, down: bool = False) -> nn.Module:
            if self.resblock_type == "ddpm":
                return ResnetBlockDDPM(act, in_ch, out_ch, temb_dim=temb_dim, dropout=dropout,
                                       norm=ncsnpp_group_norm, init_scale=init_scale, skip_rescale=skip_rescale)
            return ResnetBlockBigGAN(act, in_ch, out_ch, temb_dim=temb_dim, up=up, down=down, dropout=dropout,
                                     fir=fir, fir_kernel=fir_kernel, skip_rescale=skip_rescale,
                                     init_scale=init_scale)

        def resample(in_ch: int, up: bool) -> nn.Module:
            """The level change: a resampling BigGAN block, or a resampling layer between `ddpm` blocks."""
            if self.resblock_type == "biggan":
                return resnet(in_ch, up=up, down=not up)
            return resample_layer(in_ch, up, resamp_with_conv, fir, fir_kernel)

        def attention(ch: int) -> AttnBlock:
            return AttnBlock(ch, ncsnpp_group_norm, init_scale=init_scale, skip_rescale=skip_rescale)

        def norm_conv(in_ch: int, out_ch: int, scale: float) -> list[nn.Module]:
            return [ncsnpp_group_norm(in_ch), ddpm_conv3x3(in_ch, out_ch, init_scale=scale)]

        # The parameter-free resamplers of the input and output pyramids (outside `all_modules`, as published).
        if progressive == "output_skip":
            self.pyramid_upsample = resample_layer(channels, True, False, fir, fir_kernel)
        if progressive_input == "input_skip":
            self.pyramid_downsample = resample_layer(channels, False, False, fir, fir_kernel)

        modules: list[nn.Module] = []
        if self.conditional:
            if self.embedding_type == "fourier":
                modules.append(GaussianFourierProjection(nf, fourier_scale))
            embed_dim = 2 * nf if self.embedding_type == "fourier" else nf
            modules += [ddpm_linear(embed_dim, 4 * nf), ddpm_linear(4 * nf, 4 * nf)]

        # Encoder; `skip_channels` records the channels of every tensor kept for the decoder.
        modules.append(ddpm_conv3x3(channels, nf))
        skip_channels = [nf]
        in_ch, pyramid_ch = nf, channels
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                modules.append(resnet(in_ch, nf * mult))
                in_ch = nf * mult
                if self.attn_levels[level]:
                    modules.append(attention(in_ch))
                skip_channels.append(in_ch)
            if level != num_resolutions - 1:
                modules.append(resample(in_ch, up=False))
                if progressive_input == "input_skip":
                    modules.append(Combine(pyramid_ch, in_ch, combine_method))
                    in_ch *= 2 if combine_method == "cat" else 1
                elif progressive_input == "residual":
                    modules.append(resample_layer(pyramid_ch, False, True, fir, fir_kernel, out_ch=in_ch))
                    pyramid_ch = in_ch
                skip_channels.append(in_ch)

        # Middle.
        modules += [resnet(in_ch), attention(in_ch), resnet(in_ch)]

        # Decoder: one block more per level than the encoder, each consuming one skip tensor.
        for level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                modules.append(resnet(in_ch + skip_channels.pop(), nf * ch_mult[level]))
                in_ch = nf * ch_mult[level]
            if self.attn_levels[level]:
                modules.append(attention(in_ch))
            if progressive == "output_skip":
                modules += norm_conv(in_ch, channels, init_scale)
            elif progressive == "residual" and level == num_resolutions - 1:
                modules += norm_conv(in_ch, in_ch, 1.0)
                pyramid_ch = in_ch
            elif progressive == "residual":
                modules.append(resample_layer(pyramid_ch, True, True, fir, fir_kernel, out_ch=in_ch))
                pyramid_ch = in_ch
            if level != 0:
                modules.append(resample(in_ch, up=True))

        if progressive != "output_skip":
            modules += norm_conv(in_ch, channels, init_scale)
        self.all_modules = nn.ModuleList(modules)

    def _norm_conv(self, blocks: Iterator[nn.Module], h: torch.Tensor) -> torch.Tensor:
        """`conv(act(norm(h)))` with the next two modules of `blocks` (a GroupNorm, then a convolution)."""
        norm = next(blocks)
        return next(blocks)(self.act(norm(h)))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Score `[B, C, H, W]` of `x` `[B, C, H, W]` at noise labels `[B]` (the marginal std of the SDE)."""
        factor = 2 ** (self.num_resolutions - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {factor} for this network")
        blocks = iter(self.all_modules)
        biggan = self.resblock_type == "biggan"

        temb = None
        if self.conditional:
            if self.embedding_type == "fourier":
                temb = next(blocks)(torch.log(labels))
            else:
                temb = get_timestep_embedding(labels, self.nf)
            temb = next(blocks)(temb)
            temb = next(blocks)(self.act(temb))

        h = x if self.centered else 2 * x - 1.0
        pyramid = h

        # Encoder.
        hs = [next(blocks)(h)]
        for level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(blocks)(hs[-1], temb)
                if self.attn_levels[level]:
                    h = next(blocks)(h)
                hs.append(h)
            if level != self.num_resolutions - 1:
                h = next(blocks)(hs[-1], temb) if biggan else next(blocks)(hs[-1])
                if self.progressive_input == "input_skip":
                    pyramid = self.pyramid_downsample(pyramid)
                    h = next(blocks)(pyramid, h)
                elif self.progressive_input == "residual":
                    pyramid = h = residual_sum(next(blocks)(pyramid), h, self.skip_rescale)
                hs.append(h)

        # Middle.
        h = next(blocks)(hs[-1], temb)
        h = next(blocks)(h)
        h = next(blocks)(h, temb)

        # Decoder.
        pyramid = None
        for level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(blocks)(torch.cat([h, hs.pop()], dim=1), temb)
            if self.attn_levels[level]:
                h = next(blocks)(h)
            if self.progressive == "output_skip":
                out = self._norm_conv(blocks, h)
                pyramid = out if pyramid is None else self.pyramid_upsample(pyramid) + out
            elif self.progressive == "residual" and pyramid is None:
                pyramid = self._norm_conv(blocks, h)
            elif self.progressive == "residual":
                pyramid = h = residual_sum(next(blocks)(pyramid), h, self.skip_rescale)
            if level != 0:
                h = next(blocks)(h, temb) if biggan else next(blocks)(h)

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = self._norm_conv(blocks, h)

        if self.scale_by_sigma:
            h = h / append_dims(labels, h.ndim)
        return h
