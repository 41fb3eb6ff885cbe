"""Forward SDEs of score-based MRI reconstruction: VE, VP, sub-VP and HFS (high-frequency space).

All act on real 2-channel images `x` `[B, 2, H, W]` with diffusion times `t` `[B]` in (0, 1]. `sde(x, t)` gives
the forward drift `[B, 2, H, W]` and diffusion `[B]`; `marginal_prob(x, t)` the mean of `x_t | x_0` and its
std `[B]`; `project(z)` maps standard normal noise onto the space the SDE diffuses in (identity, or the
high-pass projector `M̂` for HFS-SDE). The SDEs are built from numbers (`SDES` registers each with its label; the
runners read the config, `runners/build.py`). Formulas: docs/ARCHITECTURE.md, "The mathematics".
"""
from __future__ import annotations

import abc
import math

import torch

from utils.common import Registry, append_dims
from utils.mri import kspace_filter

SDES = Registry("training.sde")


class SDE(abc.ABC):
    """Base class; subclasses define the drift/diffusion and the Gaussian marginal `p_t(x | x_0)`."""

    T = 1.0
    prior_std = 1.0
    # Low-frequency mask `M_lf` `[1, 1, H, W]` kept out of the diffusion (HFS-SDE); None: the SDE acts everywhere.
    lowfreq_mask: torch.Tensor | None = None

    def __init__(self, num_scales: int):
        self.N = num_scales

    @abc.abstractmethod
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward drift `f(x, t)` `[B, 2, H, W]` and diffusion `g(t)` `[B]`."""

    @abc.abstractmethod
    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """Std `[B]` of `x_t | x_0` (also the network's time label in continuous training)."""

    @abc.abstractmethod
    def marginal_mean(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of `x_t | x_0 = x`."""

    def mean_scale(self, t: torch.Tensor) -> torch.Tensor:
        """The factor `a(t)` `[B]` of the diffusing part in the mean: `marginal_mean(x) = x + (a − 1)·project(x)`."""
        return torch.ones_like(t)

    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(mean [B, 2, H, W], std [B])` of the perturbation kernel `p_t(x_t | x_0 = x)`."""
        return self.marginal_mean(x, t), self.marginal_std(t)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Map standard normal noise onto the diffusing subspace (identity except for HFS-SDE)."""
        return z

    def prior_sampling(self, z: torch.Tensor) -> torch.Tensor:
        """A sample `[B, 2, H, W]` of the prior `p_T` made from standard normal noise `z` of that shape."""
        return self.project(z) * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density `[B]` of the Gaussian prior `N(0, prior_std² I)`."""
        n = z[0].numel()
        return (-0.5 * n * math.log(2 * math.pi * self.prior_std ** 2)
                - z.flatten(1).pow(2).sum(1) / (2 * self.prior_std ** 2))

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward step `x_{i+1} = x_i + f_i + G_i z_i` (Euler–Maruyama unless overridden): `(f, G [B])`."""
        dt = 1.0 / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def langevin_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """The `α` of the Langevin corrector's step size at time `t` `[B]` (1 unless a discrete β schedule exists)."""
        return torch.ones_like(t)

    def reverse(self, score_fn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or probability-flow ODE) driven by `score_fn(x, t)`."""
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """Reverse-time SDE `dx = [f − g²·s(x, t)·(½ if ODE)] dt + g dw̄` of a forward SDE and a score function."""

    def __init__(self, forward: SDE, score_fn, probability_flow: bool = False):
        self.forward, self.score_fn, self.probability_flow = forward, score_fn, probability_flow
        self.N = forward.N

    def _combine(self, f, g, score):
        scale = 0.5 if self.probability_flow else 1.0
        drift = f - append_dims(g, f.ndim) ** 2 * score * scale
        return drift, torch.zeros_like(g) if self.probability_flow else g

    def sde(self, x, t, score=None):
        """Reverse drift and diffusion; `score` may be given to reuse an evaluation (e.g. with data consistency)."""
        f, g = self.forward.sde(x, t)
        return self._combine(f, g, self.score_fn(x, t) if score is None else score)

    def discretize(self, x, t, score=None):
        """Reverse-diffusion step terms `(rev_f, rev_G)` of the forward discretisation."""
        f, g = self.forward.discretize(x, t)
        return self._combine(f, g, self.score_fn(x, t) if score is None else score)


class _BetaSchedule(SDE):
    """Shared linear β schedule of the VP family: `β(t) = β₀ + t(β₁−β₀)`, `c(t) = −¼t²(β₁−β₀) − ½tβ₀`."""

    def __init__(self, beta_min: float, beta_max: float, num_scales: int):
        super().__init__(num_scales)
        self.beta_0, self.beta_1 = beta_min, beta_max
        self.discrete_betas = torch.linspace(beta_min / num_scales, beta_max / num_scales, num_scales)
        self.alphas = 1.0 - self.discrete_betas

    def beta(self, t):
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def log_mean_coeff(self, t):
        return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def mean_scale(self, t):
        return torch.exp(self.log_mean_coeff(t))

    def marginal_std(self, t):
        """`√(1 − e^{2c(t)})` (VP and HFS)."""
        return torch.sqrt(-torch.expm1(2.0 * self.log_mean_coeff(t)))

    def _timestep(self, t):
        return (t * (self.N - 1) / self.T).long()

    def langevin_alpha(self, t):
        return self.alphas.to(t.device)[self._timestep(t)]


@SDES.register("vpsde", label="VP-SDE")
class VPSDE(_BetaSchedule):
    """Variance-preserving SDE: drift `−½β(t)x`, diffusion `√β(t)`."""

    def sde(self, x, t):
        beta = self.beta(t)
        return -0.5 * append_dims(beta, x.ndim) * x, torch.sqrt(beta)

    def marginal_mean(self, x, t):
        return append_dims(torch.exp(self.log_mean_coeff(t)), x.ndim) * x

    def discretize(self, x, t):
        """DDPM ancestral discretisation: `f = (√α_i − 1)x`, `G = √β_i`."""
        i = self._timestep(t)
        beta = self.discrete_betas.to(x.device)[i]
        alpha = self.alphas.to(x.device)[i]
        return append_dims(torch.sqrt(alpha) - 1.0, x.ndim) * x, torch.sqrt(beta)


@SDES.register("subvpsde", label="subVP-SDE")
class subVPSDE(_BetaSchedule):
    """Sub-VP SDE (Song et al. 2021): drift `−½β(t)x`, diffusion `√(β(t)(1 − e^{−2β₀t − (β₁−β₀)t²}))`."""

    def sde(self, x, t):
        beta = self.beta(t)
        discount = -torch.expm1(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t ** 2)
        return -0.5 * append_dims(beta, x.ndim) * x, torch.sqrt(beta * discount)

    def marginal_mean(self, x, t):
        return append_dims(torch.exp(self.log_mean_coeff(t)), x.ndim) * x

    def marginal_std(self, t):
        return -torch.expm1(2.0 * self.log_mean_coeff(t))


@SDES.register("vesde", label="VE-SDE")
class VESDE(SDE):
    """Variance-exploding SDE: `σ(t) = σ_min(σ_max/σ_min)^t`, drift 0, diffusion `σ(t)√(2 ln(σ_max/σ_min))`."""

    def __init__(self, sigma_min: float, sigma_max: float, num_scales: int):
        super().__init__(num_scales)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.prior_std = self.sigma_max
        self.discrete_sigmas = torch.exp(
            torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N))

    def sde(self, x, t):
        sigma = self.marginal_std(t)
        return torch.zeros_like(x), sigma * math.sqrt(2 * (math.log(self.sigma_max) - math.log(self.sigma_min)))

    def marginal_mean(self, x, t):
        return x

    def marginal_std(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def discretize(self, x, t):
        """SMLD discretisation: `f = 0`, `G = √(σ_i² − σ_{i−1}²)`."""
        i = (t * (self.N - 1) / self.T).long()
        sigmas = self.discrete_sigmas.to(t.device)
        sigma = sigmas[i]
        previous = torch.where(i == 0, torch.zeros_like(sigma), sigmas[(i - 1).clamp(min=0)])
        return torch.zeros_like(x), torch.sqrt(sigma ** 2 - previous ** 2)


@SDES.register("hfssde", label="HFS-SDE")
class HFS_SDE(_BetaSchedule):
    """High-frequency-space SDE: VP diffusion restricted to k-space outside the low-frequency mask `M_lf`.

    With the high-pass projector `M̂x = F⁻¹((1 − M_lf) ⊙ F x)`: drift `−½β(t)M̂x`, diffusion `√β(t)` acting on
    `M̂z`; mean `x + (e^{c(t)} − 1)M̂x` (low frequencies stay exactly `x`), std `√(1 − e^{2c(t)})`.
    `lowfreq_mask` is `M_lf`, a real `[1, 1, H, W]` (or `[H, W]`) tensor of 0/1 (`training.mask_type/acc/acs`);
    `mean_equal="equal"` replaces `e^{c}` by `(1 + c/10⁶)^{10⁶}` (`training.mean_equal`).
    """

    def __init__(self, beta_min: float, beta_max: float, num_scales: int, lowfreq_mask: torch.Tensor,
                 mean_equal: str = "noequal"):
        super().__init__(beta_min, beta_max, num_scales)
        self.mean_equal = mean_equal
        if self.mean_equal not in ("equal", "noequal"):
            raise ValueError(f"training.mean_equal must be 'equal' or 'noequal', got {self.mean_equal!r}")
        self.lowfreq_mask = lowfreq_mask.reshape(1, 1, *lowfreq_mask.shape[-2:]).float()
        self.highfreq_mask = 1.0 - self.lowfreq_mask

    def high_pass(self, x: torch.Tensor) -> torch.Tensor:
        """`M̂x` on a real 2-channel image `[B, 2, H, W]`."""
        return kspace_filter(x, self.highfreq_mask.to(x.device))

    def low_pass(self, x: torch.Tensor) -> torch.Tensor:
        """`(I − M̂)x`: the low-frequency part kept exactly by the forward process."""
        return kspace_filter(x, self.lowfreq_mask.to(x.device))

    project = high_pass

    def sde(self, x, t):
        beta = self.beta(t)
        return -0.5 * append_dims(beta, x.ndim) * self.high_pass(x), torch.sqrt(beta)

    def mean_coeff(self, t):
        """`e^{c(t)}`, or `(1 + c/10⁶)^{10⁶}` with `training.mean_equal = "equal"`."""
        c = self.log_mean_coeff(t)
        if self.mean_equal == "equal":
            return ((1 + c.double() / 1e6) ** 1e6).to(t.dtype)
        return torch.exp(c)

    mean_scale = mean_coeff

    def marginal_mean(self, x, t):
        return x + append_dims(self.mean_coeff(t) - 1.0, x.ndim) * self.high_pass(x)

    def prior_logp(self, z):
        """Log-density of `N(0, I)` restricted to the high-frequency subspace (rank 2·#high-frequency samples)."""
        rank = z.shape[1] * self.highfreq_mask.sum().item()
        return -0.5 * rank * math.log(2 * math.pi) - self.high_pass(z).flatten(1).pow(2).sum(1) / 2

    def discretize(self, x, t):
        """DDPM-style step in high-frequency space: `f = (√α_i − 1)M̂x`, `G = √β_i` (noise projected)."""
        i = self._timestep(t)
        beta = self.discrete_betas.to(x.device)[i]
        alpha = self.alphas.to(x.device)[i]
        return append_dims(torch.sqrt(alpha) - 1.0, x.ndim) * self.high_pass(x), torch.sqrt(beta)
