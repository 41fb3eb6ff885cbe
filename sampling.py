"""Predictor–corrector reconstruction of undersampled multi-coil k-space (DESIGN.md §3).

A sampler step is a small function of `(sde, score_fn, x, t, y, csm, mask, ..., noise)` that returns
`(x, x_mean)`; shapes: `x` real `[B, 2, H, W]`, `t` `[B]`, `y` masked multi-coil k-space complex `[B, C, H, W]`,
`csm` complex `[B, C, H, W]`, `mask` real broadcastable to `[H, W]`, `noise` standard normal like `x` (the step
projects it onto high-frequency space for HFS-SDE). Data consistency is a term composed into each step:

    d = Aᴴ(A x − y),   d ← d / ‖d‖ · ‖g‖ · w        (norms per sample; w = sampling.mse or sampling.corrector_mse)
"""
from __future__ import annotations

import weakref

import torch
from tqdm.auto import trange

from utils.common import Registry, append_dims
from utils.mri import c2r, r2c, sense_adjoint, sense_normal

PREDICTORS = Registry("predictor")
CORRECTORS = Registry("corrector")


def _norm(v: torch.Tensor) -> torch.Tensor:
    """Per-sample Euclidean norm `[B]`."""
    return torch.linalg.vector_norm(v.flatten(1), dim=1)


class _AdjointData:
    """`Aᴴy` of the last measurement seen: a sampler passes the same tensors every step, so it is computed once.

    The cache holds weak references to `(y, csm, mask)` and their in-place version counters, so a new or modified
    tensor (even at a reused address) is never served a stale value. Inference-mode tensors, which have no version
    counter, are never cached (run samplers under `torch.no_grad()`, as they are by default).
    """

    refs, versions, value = (), (), None

    @classmethod
    def get(cls, y, csm, mask) -> torch.Tensor:
        inputs = (y, csm, mask)
        if any(isinstance(t, torch.Tensor) and t.is_inference() for t in inputs):
            return sense_adjoint(y, csm, mask)  # inference tensors have no version counter: no caching
        versions = tuple(getattr(t, "_version", None) for t in inputs)
        alive = [r() for r in cls.refs]
        if len(alive) != 3 or any(a is not t for a, t in zip(alive, inputs)) or versions != cls.versions:
            cls.refs = tuple(weakref.ref(t) if isinstance(t, torch.Tensor) else (lambda t=t: t) for t in inputs)
            cls.versions, cls.value = versions, sense_adjoint(y, csm, mask)
        return cls.value


def data_consistency(x, y, csm, mask, score, weight: float) -> torch.Tensor:
    """`Aᴴ(A x − y) = AᴴA x − Aᴴy` as a real `[B, 2, H, W]` image, rescaled per sample to `weight · ‖score‖`.

    `y` is taken as measured, i.e. zero off the mask (`M y = y`).
    """
    d = c2r(sense_normal(r2c(x), csm, mask) - _AdjointData.get(y, csm, mask))
    scale = weight * _norm(score) / _norm(d).clamp_min(torch.finfo(d.dtype).tiny)
    return d * append_dims(scale, d.ndim)


@CORRECTORS.register("langevin")
def langevin_corrector_step(sde, score_fn, x, t, y, csm, mask, *, snr, weight, noise):
    """Annealed Langevin step with data consistency.

    `g = P s(x, t)`; `ε = 2α(snr·‖n‖/‖g‖)²` (`‖n‖` before projection); `x̄ = x + ε(g − d)`; `x = x̄ + √(2ε)·P n`.
    """
    g = sde.project(score_fn(x, t))
    d = data_consistency(x, y, csm, mask, g, weight)
    step = 2 * sde.langevin_alpha(t) * (snr * _norm(noise) / _norm(g)) ** 2
    step = append_dims(step, x.ndim)
    x_mean = x + step * (g - d)
    return x_mean + torch.sqrt(2 * step) * sde.project(noise), x_mean


@CORRECTORS.register("none")
def no_corrector_step(sde, score_fn, x, t, y, csm, mask, *, snr, weight, noise):
    """No correction: `(x, x)`."""
    return x, x


@PREDICTORS.register("euler_maruyama")
def euler_maruyama_step(sde, score_fn, x, t, y, csm, mask, *, weight, noise, num_steps, project_score=False):
    """Reverse-time Euler–Maruyama step with data consistency, `dt = −1/num_steps`.

    `x̄ = x + (f − G²(g − d))·dt`, `x = x̄ + G√(−dt)·P z`; the score `g` is not projected (as published) unless
    `project_score`.
    """
    dt = -1.0 / num_steps
    g = score_fn(x, t)
    if project_score:
        g = sde.project(g)
    d = data_consistency(x, y, csm, mask, g, weight)
    f, diffusion = sde.sde(x, t)
    diffusion = append_dims(diffusion, x.ndim)
    x_mean = x + (f - diffusion ** 2 * (g - d)) * dt
    return x_mean + diffusion * (-dt) ** 0.5 * sde.project(noise), x_mean


@PREDICTORS.register("reverse_diffusion")
def reverse_diffusion_step(sde, score_fn, x, t, y, csm, mask, *, weight, noise, num_steps, project_score=False):
    """Ancestral step of the SDE's own discretisation: `x̄ = x − (f − G²(g − d))`, `x = x̄ + G·P z`."""
    g = score_fn(x, t)
    if project_score:
        g = sde.project(g)
    d = data_consistency(x, y, csm, mask, g, weight)
    rev_f, rev_g = sde.reverse(score_fn).discretize(x, t, score=g - d)
    x_mean = x - rev_f
    return x_mean + append_dims(rev_g, x.ndim) * sde.project(noise), x_mean


@PREDICTORS.register("none")
def no_predictor_step(sde, score_fn, x, t, y, csm, mask, *, weight, noise, num_steps, project_score=False):
    """No prediction: `(x, x)`."""
    return x, x


def sampling_schedule(config, sde) -> tuple[int, float]:
    """`(steps, snr)`: `sampling.N` and `sampling.snr_accelerated` with accelerated sampling, else N and snr."""
    if config.sampling.accelerated_sampling:
        return config.sampling.N, config.sampling.snr_accelerated
    return sde.N, config.sampling.snr


class SampleNoise:
    """Standard normal noise drawn per sample from its own generator, so a slice's reconstruction does not
    depend on which other slices share its batch (batch of 3 == 3 runs of 1)."""

    def __init__(self, seeds, device):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.device = device

    def __call__(self, shape) -> torch.Tensor:
        return torch.stack([torch.randn(shape[1:], generator=g, device=self.device) for g in self.generators])


def initial_state(sde, y, csm, noise) -> torch.Tensor:
    """Start of the reverse process `[B, 2, H, W]`.

    HFS-SDE: `Σ_c conj(S_c) F⁻¹(M_lf ⊙ y_c) + M̂z` (measured low frequencies plus high-frequency noise);
    others: a sample of the prior.
    """
    b, _, h, w = y.shape
    z = noise((b, 2, h, w))
    if hasattr(sde, "lowfreq_mask"):
        return c2r(sense_adjoint(y, csm, sde.lowfreq_mask.to(y.device))) + sde.project(z)
    return sde.project(z) * sde.prior_std


class CountedScore:
    """Wraps a score function and counts network evaluations per sample (NFE)."""

    def __init__(self, score_fn):
        self.score_fn, self.nfe = score_fn, 0

    def __call__(self, x, t):
        self.nfe += 1
        return self.score_fn(x, t)


@torch.no_grad()
def pc_sampler(config, sde, score_fn, y, csm, mask, noise, show_progress: bool = False):
    """Predictor–corrector reconstruction; returns `(x [B, 2, H, W], nfe)`.

    `t` runs from 1 to `sampling.eps` in the sampling schedule's steps; each step applies the corrector
    (`sampling.n_steps_each` times), then the predictor. The result is the last `x̄` (`sampling.noise_removal`).
    """
    s = config.sampling
    predictor, corrector = PREDICTORS.get(s.predictor), CORRECTORS.get(s.corrector)
    steps, snr = sampling_schedule(config, sde)
    counted = CountedScore(score_fn)
    x = initial_state(sde, y, csm, noise)
    x_mean = x
    timesteps = torch.linspace(sde.T, s.eps, steps, device=x.device)
    for i in trange(steps, disable=not show_progress, desc="PC sampling", leave=False):
        t = timesteps[i].expand(x.shape[0])
        for _ in range(s.n_steps_each):
            x, x_mean = corrector(sde, counted, x, t, y, csm, mask, snr=snr, weight=s.corrector_mse,
                                  noise=noise(x.shape))
        x, x_mean = predictor(sde, counted, x, t, y, csm, mask, weight=s.mse, noise=noise(x.shape),
                              num_steps=steps, project_score=s.project_score)
    return (x_mean if s.noise_removal else x), counted.nfe


@torch.no_grad()
def ode_sampler(config, sde, score_fn, y, csm, mask, noise, show_progress: bool = False):
    """Probability-flow ODE with data consistency, integrated by Euler steps from 1 to `sampling.eps`.

    `x ← x + (f − ½G²(g − d))·dt`; the only randomness is the initial state. Returns `(x, nfe)`.
    """
    s = config.sampling
    steps, _ = sampling_schedule(config, sde)
    counted = CountedScore(score_fn)
    x = initial_state(sde, y, csm, noise)
    flow = sde.reverse(counted, probability_flow=True)
    timesteps = torch.linspace(sde.T, s.eps, steps + 1, device=x.device)
    for i in trange(steps, disable=not show_progress, desc="ODE sampling", leave=False):
        t = timesteps[i].expand(x.shape[0])
        dt = timesteps[i + 1] - timesteps[i]
        g = counted(x, t)
        d = data_consistency(x, y, csm, mask, g, s.mse)
        drift, _ = flow.sde(x, t, score=g - d)
        x = x + drift * dt
    return x, counted.nfe


SAMPLERS = {"pc": pc_sampler, "ode": ode_sampler}
