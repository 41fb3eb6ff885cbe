"""Building blocks of the DDPM score U-Net (Ho et al. 2020, as ported by score_sde_pytorch).

Submodule names (`GroupNorm_0`, `Conv_0`, `Dense_0`, `NIN_0`, ...) and their registration order are part of the
checkpoint format: they fix the `state_dict` keys and the order of `parameters()`, which the EMA's positional
`shadow_params` list relies on. The order follows the published HFS-SDE code (ResnetBlockDDPM: GroupNorm_0,
Conv_0, Dense_0, GroupNorm_1, Conv_1, NIN_0; score_sde_pytorch registers GroupNorm_0, GroupNorm_1, Conv_0, Conv_1,
Dense_0, NIN_0: the same keys but another `parameters()` order, so its EMA lists do not carry over).

Initialisation is DDPM's: weights drawn by `default_init` (variance scaling, fan_avg, uniform), biases zero.
A requested scale of 0 becomes 1e-10 (as published), so "zero-initialised" layers start tiny but not exactly 0.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.normalization import group_norm

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "swish": nn.SiLU,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "lrelu": lambda: nn.LeakyReLU(negative_slope=0.2),
}


def get_act(nonlinearity: str) -> nn.Module:
    """The activation named `nonlinearity` (`model.nonlinearity`: swish, elu, relu, lrelu)."""
    name = nonlinearity.lower()
    if name not in ACTIVATIONS:
        raise ValueError(f"model.nonlinearity={nonlinearity!r} is unknown; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


@torch.no_grad()
def default_init_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Fill `weight` in place with DDPM's `variance_scaling(scale, "fan_avg", "uniform")`.

    Fans follow the JAX convention with `out_axis=0`, `in_axis=1`: for a shape `[d0, d1, *k]`,
    `fan_in = d1·∏k`, `fan_out = d0·∏k`; values are uniform in `±√(3·scale / ((fan_in + fan_out) / 2))`.
    """
    scale = 1e-10 if scale == 0 else scale
    receptive_field = math.prod(weight.shape[2:])
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive_field / 2
    bound = math.sqrt(3.0 * scale / fan_avg)
    return weight.uniform_(-bound, bound)


def ddpm_conv3x3(in_ch: int, out_ch: int, stride: int = 1, padding: int = 1, init_scale: float = 1.0) -> nn.Conv2d:
    """3×3 convolution with DDPM initialisation (zero bias)."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=padding)
    default_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def ddpm_linear(in_features: int, out_features: int) -> nn.Linear:
    """Dense layer with DDPM initialisation (zero bias)."""
    linear = nn.Linear(in_features, out_features)
    default_init_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def get_timestep_embedding(labels: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding `[B, dim]` of float labels `[B]` (here the marginal std of the SDE).

    With `half = dim // 2` and `ω_i = exp(−i·ln(max_positions)/(half − 1))`: `[sin(t·ω), cos(t·ω)]`,
    zero-padded to `dim` when odd. Computed in float32 as published.
    """
    if labels.ndim != 1:
        raise ValueError(f"time labels must have shape [B], got {tuple(labels.shape)}")
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=labels.device)
                      * (-math.log(max_positions) / (half - 1)))
    args = labels.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class NIN(nn.Module):
    """Per-pixel dense layer ("network in network"): `y[b, :, h, w] = x[b, :, h, w] @ W + b`.

    Parameters `W` `[in_dim, num_units]` and `b` `[num_units]` (checkpoint names); `[B, in_dim, H, W]` →
    `[B, num_units, H, W]`.
    """

    def __init__(self, in_dim: int, num_units: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(default_init_(torch.empty(in_dim, num_units), init_scale))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.W.t()[:, :, None, None], self.b)


def residual_sum(x: torch.Tensor, h: torch.Tensor, skip_rescale: bool) -> torch.Tensor:
    """`x + h`, or `(x + h) / √2` with `skip_rescale` (NCSN++ keeps the variance of a sum of two branches)."""
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels with a residual connection; `[B, C, H, W]` → same shape.

    `q, k, v = NIN_0..2(GroupNorm_0(x))`, weights `softmax(qᵀk / √C)` over the `H·W` positions, output
    `x + NIN_3(attention(v))` (NIN_3 starts near zero, at `init_scale`), divided by √2 with `skip_rescale`.
    """

    def __init__(self, channels: int, norm: Callable[[int], nn.Module] = group_norm, init_scale: float = 0.0,
                 skip_rescale: bool = False):
        super().__init__()
        self.skip_rescale = skip_rescale
        self.GroupNorm_0 = norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.GroupNorm_0(x)
        # Tokens [B, H·W, C]; the default SDPA scale is 1/√C.
        q, k, v = (nin(h).flatten(2).transpose(1, 2) for nin in (self.NIN_0, self.NIN_1, self.NIN_2))
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(1, 2).reshape(B, C, H, W)
        return residual_sum(x, self.NIN_3(h), self.skip_rescale)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling, then a 3×3 convolution `Conv_0`: `[B, C, H, W]` → `[B, out_ch, 2H, 2W]`
    (`out_ch = C` without the convolution)."""

    def __init__(self, channels: int, with_conv: bool = True, out_ch: int | None = None):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.Conv_0 = ddpm_conv3x3(channels, out_ch or channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.Conv_0(h) if self.with_conv else h


class Downsample(nn.Module):
    """×2 downsampling: strided 3×3 `Conv_0` with TF "SAME" padding (pad right/bottom by 1), or 2×2 average
    pooling without a convolution; `[B, C, H, W]` → `[B, out_ch, H/2, W/2]` for even `H, W` (`out_ch = C`
    without the convolution)."""

    def __init__(self, channels: int, with_conv: bool = True, out_ch: int | None = None):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.Conv_0 = ddpm_conv3x3(channels, out_ch or channels, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlockDDPM(nn.Module):
    """DDPM residual block: `[B, in_ch, H, W]` (+ time embedding `[B, temb_dim]`) → `[B, out_ch, H, W]`.

    `h = Conv_0(act(GroupNorm_0(x))) + Dense_0(act(temb))`, `h = Conv_1(dropout(act(GroupNorm_1(h))))`;
    the skip path is `x`, or `NIN_0(x)` when the channel count changes; the output is `skip + h` (divided by √2
    with `skip_rescale`). `Conv_1` starts near zero (`init_scale`), so a fresh block is close to the identity.
    Without `temb_dim` there is no `Dense_0` (unconditional network).
    """

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 dropout: float = 0.1, norm: Callable[[int], nn.Module] = group_norm, init_scale: float = 0.0,
                 skip_rescale: bool = False):
        super().__init__()
        out_ch = out_ch or in_ch
        self.act = act
        self.skip_rescale = skip_rescale
        self.GroupNorm_0 = norm(in_ch)
        self.Conv_0 = ddpm_conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = ddpm_linear(temb_dim, out_ch)
        self.GroupNorm_1 = norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = ddpm_conv3x3(out_ch, out_ch, init_scale=init_scale)
        # The skip path needs a projection only when the channel count changes (Identity holds no weights).
        self.NIN_0 = NIN(in_ch, out_ch) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        return residual_sum(self.NIN_0(x), h, self.skip_rescale)
