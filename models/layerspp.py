"""Layers of the NCSN++ score network (Song et al. 2021) in plain PyTorch, with score_sde_pytorch's checkpoint names.

FIR resampling is StyleGAN2's `upfirdn2d` — zero-insertion (`up`), padding (negative pads crop), a 2-D FIR filter
and a stride (`down`) — written with `F.pad` and a depthwise `F.conv2d`, so it needs no compiled extension and runs
(and differentiates, compiles, autocasts) on every device. The layers built from it keep score_sde's submodule
names (`Conv_0`, `Conv2d_0`, `Conv_2`, `Dense_0`, `GroupNorm_0`, ...) in the same registration order, which fixes
the `state_dict` keys and the order of `parameters()`; filter taps are non-persistent buffers (not in a checkpoint).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Downsample, Upsample, ddpm_conv3x3, ddpm_linear, default_init_, residual_sum


def ncsnpp_group_norm(channels: int) -> nn.GroupNorm:
    """NCSN++'s GroupNorm: `min(channels // 4, 32)` groups, eps 1e-6; `[B, C, H, W]` → same shape."""
    groups = min(channels // 4, 32)
    if groups == 0 or channels % groups:
        raise ValueError(f"NCSN++ normalises {channels} channels with min({channels} // 4, 32) groups, which does not "
                         f"divide them; choose model.nf and model.ch_mult so that every level has a multiple of 4 "
                         f"channels (and of 32 above 128)")
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6)


def ddpm_conv1x1(in_ch: int, out_ch: int, init_scale: float = 1.0) -> nn.Conv2d:
    """1×1 convolution with DDPM initialisation (zero bias)."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)
    default_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def fir_kernel_2d(taps: Sequence[float], gain: float = 1.0) -> torch.Tensor:
    """The 2-D FIR filter `[k, k]` (float32) of 1-D `taps` (outer product) or 2-D taps, normalised to sum `gain`."""
    k = torch.as_tensor(taps, dtype=torch.float32)
    if k.ndim == 1:
        k = torch.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"model.fir_kernel must be 1-D taps or a square 2-D filter, got shape {tuple(k.shape)}")
    return k / k.sum() * gain


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample, FIR-filter and downsample each channel: `[B, C, H, W]` → `[B, C, H', W']`.

    Zeros are inserted after every sample (`up − 1` each, both axes), the result is padded by `pad = (before, after)`
    on both axes (negative values crop), correlated with the flipped `kernel` `[kh, kw]` (i.e. convolved with it),
    and every `down`-th output kept: `H' = (H·up + before + after − kh) // down + 1`.
    """
    B, C, H, W = x.shape
    if up > 1:
        x = F.pad(x.reshape(B, C, H, 1, W, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(B, C, H * up, W * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, (0, 1)).to(x.dtype).expand(C, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=C)


def upsample_conv_2d(x: torch.Tensor, weight: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """StyleGAN2's fused ×`factor` upsampling and convolution: `[B, in, H, W]` → `[B, out, factor·H, factor·W]`.

    A transposed convolution of stride `factor` with the spatially flipped `weight` `[out, in, k, k]`, then the FIR
    `kernel` (already scaled by `factor²`) with the padding that centres the result: FIR upsampling followed by
    the 3×3 convolution, away from a one-pixel border. score_sde_pytorch's port cannot run (it flips the weight
    with a negative-step slice and gives the transposed convolution a 4-element stride and an output padding
    computed from it); this is the StyleGAN2 computation it ports.
    """
    conv_size = weight.shape[-1]
    p = (kernel.shape[0] - factor) - (conv_size - 1)
    x = F.conv_transpose2d(x, torch.flip(weight, (2, 3)).transpose(0, 1), stride=factor)
    return upfirdn2d(x, kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: torch.Tensor, weight: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """StyleGAN2's fused FIR filter and strided convolution: `[B, in, H, W]` → `[B, out, H/factor, W/factor]`."""
    conv_size = weight.shape[-1]
    p = (kernel.shape[0] - factor) + (conv_size - 1)
    return F.conv2d(upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2)), weight, stride=factor)


class FIRResample(nn.Module):
    """×2 FIR up- or downsampling, optionally fused with a 3×3 convolution `Conv2d_0` (weight and bias).

    `[B, in_ch, H, W]` → `[B, out_ch, 2H, 2W]` (`up`) or `[B, out_ch, H/2, W/2]`; without the convolution
    `out_ch = in_ch`. Upsampling filters with the taps scaled to sum 4 (constant images stay constant).
    """

    def __init__(self, in_ch: int, up: bool, fir_kernel: Sequence[float], with_conv: bool = False,
                 out_ch: int | None = None):
        super().__init__()
        self.up = up
        self.register_buffer("kernel", fir_kernel_2d(fir_kernel, gain=4.0 if up else 1.0), persistent=False)
        self.with_conv = with_conv
        if with_conv:
            self.Conv2d_0 = ddpm_conv3x3(in_ch, out_ch or in_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kernel.shape[0] - 2
        if self.with_conv:
            conv = self.Conv2d_0
            resample = upsample_conv_2d if self.up else conv_downsample_2d
            return resample(x, conv.weight, self.kernel) + conv.bias[:, None, None]
        if self.up:
            return upfirdn2d(x, self.kernel, up=2, pad=((p + 1) // 2 + 1, p // 2))
        return upfirdn2d(x, self.kernel, down=2, pad=((p + 1) // 2, p // 2))


def resample_layer(in_ch: int, up: bool, with_conv: bool, fir: bool, fir_kernel: Sequence[float],
                   out_ch: int | None = None) -> nn.Module:
    """The ×2 up- or downsampling layer of NCSN++: FIR (`Conv2d_0` when with a convolution) or, without `fir`,
    nearest-neighbour upsampling / 2×2 average pooling (`Conv_0`: a 3×3 convolution after the upsampling, or a
    strided one instead of the pooling).

    score_sde_pytorch's non-FIR `Upsample` passes both `size` and `scale_factor` to `F.interpolate` and cannot run;
    the nearest-neighbour ×2 upsampling it asks for is what runs here.
    """
    if fir:
        return FIRResample(in_ch, up, fir_kernel, with_conv, out_ch)
    return (Upsample if up else Downsample)(in_ch, with_conv, out_ch)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar: `[B]` → `[B, 2·embedding_size]`, `[sin(2π·x·W), cos(2π·x·W)]`.

    `W` `[embedding_size]` ~ N(0, scale²) is a parameter with `requires_grad=False`: fixed, but part of the
    `state_dict` (score_sde checkpoints carry it).
    """

    def __init__(self, embedding_size: int, scale: float):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_proj = x[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(x_proj), torch.cos(x_proj)], dim=-1)


class Combine(nn.Module):
    """Joins the input pyramid `x` `[B, dim1, H, W]` to the features `y` `[B, dim2, H, W]`: `Conv_0` (1×1, to
    `dim2` channels) of `x`, then concatenated before `y` (`cat`, `[B, 2·dim2, H, W]`) or added to it (`sum`)."""

    def __init__(self, dim1: int, dim2: int, method: str):
        super().__init__()
        self.Conv_0 = ddpm_conv1x1(dim1, dim2)
        self.method = method

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.Conv_0(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


class ResnetBlockBigGAN(nn.Module):
    """BigGAN-style residual block, optionally resampling ×2: `[B, in_ch, H, W]` (+ `temb` `[B, temb_dim]`) →
    `[B, out_ch, H', W']`.

    `h = act(GroupNorm_0(x))`, both `h` and `x` resampled (FIR or naive, `up` or `down`), `h = Conv_0(h) +
    Dense_0(act(temb))`, `h = Conv_1(dropout(act(GroupNorm_1(h))))` (`Conv_1` at `init_scale`); the skip path is
    `Conv_2(x)` (1×1) when the channels change or the block resamples; output `skip + h`, divided by √2 with
    `skip_rescale`. Without `temb_dim` there is no `Dense_0`.
    """

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 up: bool = False, down: bool = False, dropout: float = 0.1, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True, init_scale: float = 0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.act = act
        self.skip_rescale = skip_rescale
        self.resample = resample_layer(in_ch, up, False, fir, fir_kernel) if up or down else None
        self.GroupNorm_0 = ncsnpp_group_norm(in_ch)
        self.Conv_0 = ddpm_conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = ddpm_linear(temb_dim, out_ch)
        self.GroupNorm_1 = ncsnpp_group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = ddpm_conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.Conv_2 = ddpm_conv1x1(in_ch, out_ch) if in_ch != out_ch or up or down else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.act(self.GroupNorm_0(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        return residual_sum(self.Conv_2(x), h, self.skip_rescale)
