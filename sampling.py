"""Diffusion reconstruction of undersampled multi-coil k-space: predictor/corrector steps, the PC, ODE and DDIM
samplers, data consistency, posterior-sample noise.

A sampler step is a small function of `(sde, score_fn, x, t, aty, csm, mask, ..., noise)` that returns
`(x, x_mean)`; shapes: `x` real `[B, 2, H, W]`, `t` `[B]`, `aty` the adjoint `Aᴴy` of the measured multi-coil
k-space `y` as a complex image `[B, 1, H, W]` (the sampler computes it once per batch), `csm` complex
`[B, C, H, W]`, `mask` real broadcastable to `[H, W]`, `noise` standard normal like `x` (the step projects it onto
high-frequency space for HFS-SDE). Data consistency is a term composed into each step:

    d = Aᴴ(A x − y),   d ← d / ‖d‖ · ‖s‖ · w        (norms per sample; w = `mse` or `corrector_mse`)

with `s` the score used in that update. Names follow `sde_lib`: `f` and `g` are the drift and diffusion
coefficient, `s` is the score.

A sampler is a function `(score_fn, sde, y, maps, mask, settings, noise) -> (x [B, 2, H, W], nfe)` of its frozen
settings object (`PCSettings`, `ODESettings`, `DDIMSettings`, whose fields carry the names of the `sampling.*`
config keys they come from); `SAMPLERS` registers each with its label and settings class. Nothing here reads a
config: the runners resolve it (`runners/build.py`).

Noise-aware data consistency (`sampling.noise_aware`, `Measurements`): measured samples carry noise, and fitting
them exactly through the ill-conditioned SENSE inverse amplifies it into a grain over the image. The noise level
`σ̂` (complex std per k-space sample) is estimated from the data (`utils/noise.py`: the residual of the
least-squares SENSE fit over its degrees of freedom). The proximal data-consistency step on a denoised estimate `x̂₀` at diffusion time `t`,

    x = argmin ‖A x − y‖² + λ_t ‖x − x̂₀‖²,   λ_t = ζ · σ̂² / σ̄_t²,   σ̄_t = σ(t) / a(t)

(ζ = `sampling.dc_scale`; σ̄_t the noise level of `x_t` in the units of `x₀`) is the MAP estimate under the
Gaussian likelihood at noise `σ̂` and a Gaussian prior around `x̂₀` whose variance shrinks with σ̄_t², as in
DiffPIR-type samplers (ζ absorbs how much better the denoiser is than σ̄_t, and the factor 2 between the complex
noise power and the per-channel σ̄_t): early steps (σ̄_t large) follow the data, late steps (σ̄_t → 0) trust the
denoiser, so the last steps do not re-inject the measured noise. Conjugate gradients stop by the discrepancy
principle, as soon as `‖A x − y‖ ≤ τ σ̂ √m` (τ = `sampling.discrepancy`, `m` the number of measured complex samples), or after the
step's iteration count. The final `final_dc='cg'` step (λ = `sampling.dc_lambda`) stops by the same rule, so it
fits the data down to the noise level and no further (Morozov's discrepancy principle).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import trange

from utils.common import Registry, append_dims, check_setting, derived_seed, finite_above, finite_at_least
from utils.mri import batch_dot, c2r, r2c, safe_div, sense_adjoint, sense_forward, sense_normal
from utils.noise import noise_sigma

PREDICTORS = Registry("predictor")
CORRECTORS = Registry("corrector")


def _norm(v: torch.Tensor) -> torch.Tensor:
    """Per-sample Euclidean norm `[B]`."""
    return torch.linalg.vector_norm(v.flatten(1), dim=1)


def data_consistency(x, aty, csm, mask, score, weight: float) -> torch.Tensor:
    """`Aᴴ(A x − y) = AᴴA x − Aᴴy` as a real `[B, 2, H, W]` image, rescaled per sample to `weight · ‖score‖`.

    `aty` is `Aᴴy` (complex `[B, 1, H, W]`, `sense_adjoint(y, csm, mask)`) of the measured k-space `y`.
    """
    d = c2r(sense_normal(r2c(x), csm, mask) - aty)
    scale = weight * _norm(score) / _norm(d).clamp_min(torch.finfo(d.dtype).tiny)
    return d * append_dims(scale, d.ndim)


class Measurements:
    """The measured k-space of a batch and its data-consistency solver.

    `y` complex `[B, C, H, W]` (masked), `csm` `[B, C, H, W]`, `mask` real broadcastable to `[H, W]`. With
    `noise_aware` the noise std `sigma` `[B]` is estimated once (module docstring); `dc_scale` is ζ and
    `discrepancy` τ. Without it `sigma` is None and `solve` is the plain
    proximal step with the λ it is given.
    """

    def __init__(self, y, csm, mask, *, noise_aware: bool = False, dc_scale: float = 1.0, discrepancy: float = 1.0):
        self.y, self.csm, self.mask = y * mask, csm, mask
        self.aty = sense_adjoint(y, csm, mask)
        self.dc_scale, self.sigma, self.target = dc_scale, None, None
        if noise_aware:
            self.sigma = noise_sigma(y, csm, mask)
            measured = float(torch.broadcast_to(mask, y.shape)[0].gt(0).sum())
            self.target = discrepancy * self.sigma * measured ** 0.5

    def noise_lambda(self, sde, t: torch.Tensor) -> torch.Tensor:
        """`λ_t = ζ σ̂² / σ̄_t²` `[B]` (module docstring); needs `noise_aware`."""
        level = sde.marginal_std(t) / sde.mean_scale(t)
        return self.dc_scale * self.sigma ** 2 / level.clamp_min(torch.finfo(level.dtype).tiny) ** 2

    def solve(self, x0: torch.Tensor, lamda, iters: int) -> torch.Tensor:
        """`argmin ‖A x − y‖² + λ‖x − x₀‖²` for a real `[B, 2, H, W]` estimate `x₀` (λ a float or `[B]`), by at most
        `iters` conjugate-gradient steps on the correction `c = x − x₀` from 0; with `noise_aware` a sample stops as
        soon as its data residual reaches `τ σ̂ √m` (checked before every step, so data already fitting within
        the noise leave `x₀` unchanged).

        CG on `(AᴴA + λ) c = Aᴴ(y − A x₀)` keeps the residual `r = −Aᴴm − λc` of the misfit `m = A(x₀ + c) − y`, so
        the misfit's norm follows from image-domain products alone: `‖m + αAp‖² = ‖m‖² + 2α Re⟨Aᴴm, p⟩ + α²‖Ap‖²`
        with `Aᴴm = −r − λc` and `‖Ap‖² = Re⟨p, AᴴAp⟩` (one normal operator per step, no k-space update)."""
        image = r2c(x0)
        lamda = torch.as_tensor(lamda, dtype=x0.dtype, device=x0.device).expand(x0.shape[0])
        lamda_image = append_dims(lamda, x0.ndim)
        misfit = sense_forward(image, self.csm, self.mask) - self.y
        misfit_sq, r = batch_dot(misfit, misfit), -sense_adjoint(misfit, self.csm, self.mask)
        p, rr = r, batch_dot(r, r)
        correction = torch.zeros_like(image)
        for _ in range(iters):
            if self.target is not None:
                unfitted = misfit_sq > self.target ** 2
                if not unfitted.any():
                    break  # every sample fits within the noise: the remaining steps would not move it
            data_p = sense_normal(p, self.csm, self.mask)
            data_pp = batch_dot(p, data_p)
            alpha = safe_div(rr, data_pp + lamda * batch_dot(p, p))
            if self.target is not None:
                alpha = alpha * unfitted
                misfit_sq = (misfit_sq - 2 * alpha * batch_dot(r + lamda_image * correction, p)
                             + alpha ** 2 * data_pp).clamp_min(0)
            step = append_dims(alpha, x0.ndim)
            correction = correction + step * p
            r = r - step * (data_p + lamda_image * p)
            rr_next = batch_dot(r, r)
            p = r + append_dims(safe_div(rr_next, rr), x0.ndim) * p
            rr = rr_next
        return c2r(image + correction)


def measurements(settings: "Clean", y, csm, mask) -> Measurements:
    """`Measurements` of a batch with the settings' `noise_aware`, `dc_scale` and `discrepancy`."""
    return Measurements(y, csm, mask, noise_aware=settings.noise_aware, dc_scale=settings.dc_scale,
                        discrepancy=settings.discrepancy)


@CORRECTORS.register("langevin")
def langevin_corrector_step(sde, score_fn, x, t, aty, csm, mask, *, snr, weight, noise):
    """Annealed Langevin step with data consistency.

    `s = P score(x, t)`; `ε = 2α(snr·‖n‖/‖s‖)²` (`‖n‖` before projection); `x̄ = x + ε(s − d)`;
    `x = x̄ + √(2ε)·P n`.
    """
    s = sde.project(score_fn(x, t))
    d = data_consistency(x, aty, csm, mask, s, weight)
    step = 2 * sde.langevin_alpha(t) * (snr * _norm(noise) / _norm(s)) ** 2
    step = append_dims(step, x.ndim)
    x_mean = x + step * (s - d)
    return x_mean + torch.sqrt(2 * step) * sde.project(noise), x_mean


@CORRECTORS.register("none")
def no_corrector_step(sde, score_fn, x, t, aty, csm, mask, *, snr, weight, noise):
    """No correction: `(x, x)`."""
    return x, x


@PREDICTORS.register("euler_maruyama")
def euler_maruyama_step(sde, score_fn, x, t, aty, csm, mask, *, weight, noise, num_steps, project_score=False):
    """Reverse-time Euler–Maruyama step with data consistency, `dt = −1/num_steps`.

    `x̄ = x + (f − g²(s − d))·dt`, `x = x̄ + g√(−dt)·P z`; the score `s` is not projected (as published) unless
    `project_score`.
    """
    dt = -1.0 / num_steps
    s = score_fn(x, t)
    if project_score:
        s = sde.project(s)
    d = data_consistency(x, aty, csm, mask, s, weight)
    f, g = sde.sde(x, t)
    g = append_dims(g, x.ndim)
    x_mean = x + (f - g ** 2 * (s - d)) * dt
    return x_mean + g * (-dt) ** 0.5 * sde.project(noise), x_mean


@PREDICTORS.register("reverse_diffusion")
def reverse_diffusion_step(sde, score_fn, x, t, aty, csm, mask, *, weight, noise, num_steps, project_score=False):
    """Ancestral step of the SDE's own discretisation: `x̄ = x − (f − g²(s − d))`, `x = x̄ + g·P z`."""
    s = score_fn(x, t)
    if project_score:
        s = sde.project(s)
    d = data_consistency(x, aty, csm, mask, s, weight)
    rev_f, rev_g = sde.reverse(score_fn).discretize(x, t, score=s - d)
    x_mean = x - rev_f
    return x_mean + append_dims(rev_g, x.ndim) * sde.project(noise), x_mean


@PREDICTORS.register("none")
def no_predictor_step(sde, score_fn, x, t, aty, csm, mask, *, weight, noise, num_steps, project_score=False):
    """No prediction: `(x, x)`."""
    return x, x


class SampleNoise:
    """Standard normal noise drawn per sample from its own generator, so a slice's reconstruction does not
    depend on which other slices share its batch (batch of 3 == 3 runs of 1)."""

    def __init__(self, seeds, device):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.device = device

    def __call__(self, shape) -> torch.Tensor:
        return torch.stack([torch.randn(shape[1:], generator=gen, device=self.device) for gen in self.generators])


def posterior_seeds(seeds, num_samples: int) -> list[int]:
    """Noise seeds of `num_samples` posterior samples of each slice, slice-major (`[s₀ k₀, s₀ k₁, …, s₁ k₀, …]`):
    sample 0 keeps the slice's seed, so one sample is the single reconstruction; sample k gets a seed derived from
    `(seed, k)`, so a slice's samples depend neither on the batch nor on the other slices."""
    return [int(s) if k == 0 else derived_seed(int(s) % 2**63, k) for s in seeds for k in range(num_samples)]


def initial_state(sde, y, csm, noise) -> torch.Tensor:
    """Start of the reverse process `[B, 2, H, W]`.

    A sample of the prior from `noise`; for HFS-SDE (an SDE with a `lowfreq_mask`) the measured low frequencies
    are added: `Σ_c conj(S_c) F⁻¹(M_lf ⊙ y_c) + M̂z`. `y` and `csm` are complex `[B, C, H, W]`.
    """
    b, _, h, w = y.shape
    x = sde.prior_sampling(noise((b, 2, h, w)))
    if sde.lowfreq_mask is None:
        return x
    return c2r(sense_adjoint(y, csm, sde.lowfreq_mask.to(y.device))) + x


class CountedScore:
    """Wraps a score function and counts network evaluations per sample (NFE)."""

    def __init__(self, score_fn):
        self.score_fn, self.nfe = score_fn, 0

    def __call__(self, x, t):
        self.nfe += 1
        return self.score_fn(x, t)


FINAL_DC = ("none", "replace", "cg")


def support(csm: torch.Tensor) -> torch.Tensor:
    """Coil-map support `Σ_c |S_c|² > 0` as a real `[B, 1, H, W]` mask (zero where no coil sees the image)."""
    return (csm.abs().square().sum(dim=1, keepdim=True) > 0).to(csm.real.dtype)


def check_final_dc(mode: str) -> None:
    """Raise a ValueError naming `sampling.final_dc` unless it is one of `FINAL_DC`."""
    if mode not in FINAL_DC:
        raise ValueError(f"unknown sampling.final_dc {mode!r}; choose one of {list(FINAL_DC)}")


@dataclass(frozen=True, kw_only=True)
class Clean:
    """The data-consistency and clean-image options every sampler takes, each named like its `sampling.*` key:
    `noise_aware` data consistency with `dc_scale` (ζ) and `discrepancy` (τ) (`Measurements`, module docstring);
    `support_mask` keeps the image on the coil-map support (also after every step); `final_dc` is `none`,
    `replace` or `cg` (`final_data_consistency`, with `dc_lambda` and `cg_iters`)."""

    noise_aware: bool
    dc_scale: float
    discrepancy: float
    support_mask: bool
    final_dc: str
    dc_lambda: float
    cg_iters: int

    def __post_init__(self):
        check_final_dc(self.final_dc)
        check_setting("sampling.dc_scale", self.dc_scale, finite_above(self.dc_scale, 0), "a finite number > 0")
        check_setting("sampling.discrepancy", self.discrepancy, finite_above(self.discrepancy, 0),
                      "a finite number > 0")
        check_setting("sampling.dc_lambda", self.dc_lambda, finite_at_least(self.dc_lambda, 0), "a finite number ≥ 0")
        if self.final_dc == "cg":
            check_setting("sampling.dc_lambda", self.dc_lambda, self.dc_lambda > 0, "> 0 with sampling.final_dc='cg'")
            check_setting("sampling.cg_iters", self.cg_iters, self.cg_iters >= 1,
                          "at least 1 with sampling.final_dc='cg'")


@dataclass(frozen=True, kw_only=True)
class SamplerSettings(Clean):
    """What every sampler takes: `steps` sampling steps with `t` from 1 down to `eps` (`sampling.N` with accelerated
    sampling, else `model.num_scales`; `sampling.eps`), and the clean-image options."""

    steps: int
    eps: float

    def __post_init__(self):
        super().__post_init__()
        if self.steps < 1:
            raise ValueError(f"the sampler needs at least one step (sampling.N / model.num_scales), got {self.steps}")
        check_setting("sampling.eps", self.eps, finite_above(self.eps, 0) and self.eps < 1, "a number in (0, 1)")


@dataclass(frozen=True, kw_only=True)
class PCSettings(SamplerSettings):
    """Settings of `pc_sampler`: `predictor`/`corrector` names (`PREDICTORS`, `CORRECTORS`), the corrector's `snr`
    (`sampling.snr`, or `sampling.snr_accelerated` with accelerated sampling) and `n_steps_each`, the
    data-consistency weights `mse` (predictor) and `corrector_mse`, `project_score` (project the predictor's
    score), `noise_removal` (the result is the last noise-free `x̄`) and `denoise` (one Tweedie step at the end)."""

    predictor: str
    corrector: str
    snr: float
    n_steps_each: int
    mse: float
    corrector_mse: float
    project_score: bool
    noise_removal: bool
    denoise: bool

    def __post_init__(self):
        super().__post_init__()
        PREDICTORS.get(self.predictor)
        CORRECTORS.get(self.corrector)
        check_setting("sampling.n_steps_each", self.n_steps_each, self.n_steps_each >= 1, "at least 1")
        for key in ("mse", "corrector_mse"):
            value = getattr(self, key)
            check_setting(f"sampling.{key}", value, finite_at_least(value, 0), "a finite weight ≥ 0")


@dataclass(frozen=True, kw_only=True)
class ODESettings(SamplerSettings):
    """Settings of `ode_sampler`: the data-consistency weight `mse` and `denoise` (one Tweedie step at the end)."""

    mse: float
    denoise: bool

    def __post_init__(self):
        super().__post_init__()
        check_setting("sampling.mse", self.mse, finite_at_least(self.mse, 0), "a finite weight ≥ 0")


@dataclass(frozen=True, kw_only=True)
class DDIMSettings(SamplerSettings):
    """Settings of `ddim_sampler`: `eta` (0 deterministic, 1 ancestral) and the per-step data consistency,
    `dc_iters` conjugate-gradient steps of the λ-regularised fit (λ = `dc_lambda`)."""

    eta: float
    dc_iters: int

    def __post_init__(self):
        super().__post_init__()
        check_setting("sampling.eta", self.eta, finite_at_least(self.eta, 0) and self.eta <= 1, "a number in [0, 1]")
        check_setting("sampling.dc_iters", self.dc_iters, self.dc_iters >= 1, "at least 1 with the DDIM sampler")
        check_setting("sampling.dc_lambda", self.dc_lambda, self.dc_lambda > 0 or self.noise_aware,
                      "> 0 with the DDIM sampler (or set sampling.noise_aware)")


def final_data_consistency(x, data: Measurements, mode: str, lamda, iters: int) -> torch.Tensor:
    """Make a reconstruction `x` (real `[B, 2, H, W]`) agree with the measured k-space `data`.

    - `replace`: every coil's measured samples replace the predicted ones, `x ← Σ_c conj(S_c) F⁻¹(M y_c +
      (1 − M) F(S_c x))` = `x + Aᴴ(y − A x)` where `Σ|S|² = 1`: one unit gradient step on `½‖A x − y‖²`. It
      is the exact projection onto the data for one coil; with several coils the combination mixes measured and
      predicted samples again, so it lowers the data residual without removing it;
    - `cg`: `argmin ‖A x' − y‖² + λ‖x' − x‖²` by `iters` conjugate-gradient steps on the correction
      (`Measurements.solve`; λ a float or `[B]`, in the units of the data): the multi-coil projection onto the
      data as λ → 0, a compromise with the prior for noisy data; noise-aware data stop at the discrepancy level;
    - `none`: `x` unchanged.
    """
    check_final_dc(mode)
    if mode == "none":
        return x
    if mode == "replace":
        return c2r(data.aty + sense_normal(r2c(x), data.csm, 1 - data.mask))
    return data.solve(x, lamda, iters)


def finish(settings: PCSettings | ODESettings, sde, score_fn, x, t, data: Measurements) -> torch.Tensor:
    """The clean-image options applied to a sampler's result `x` at its last time `t` (`[B]`), in this order:

    `denoise`: one more score evaluation, `x ← x + σ(t)² P s(x, t)` (Tweedie's denoiser at the last noise level);
    then `clean`.
    """
    if settings.denoise:
        x = x + append_dims(sde.marginal_std(t), x.ndim) ** 2 * sde.project(score_fn(x, t))
    return clean(settings, x, data)


def clean(settings: Clean, x, data: Measurements) -> torch.Tensor:
    """`support_mask` (`x ← x · 1[Σ|S|² > 0]`), then `final_dc` (`final_data_consistency`, λ = `dc_lambda`,
    `cg_iters` steps; with noise-aware data CG stops at the discrepancy level) on a result `x`."""
    if settings.support_mask:
        x = x * support(data.csm).repeat(1, 2, 1, 1)
    return final_data_consistency(x, data, settings.final_dc, settings.dc_lambda, settings.cg_iters)


SAMPLERS = Registry("diffusion sampler")


@SAMPLERS.register("pc", label="PC", kind="diffusion", settings=PCSettings)
@torch.no_grad()
def pc_sampler(score_fn, sde, y, csm, mask, settings: PCSettings, noise, show_progress: bool = False):
    """Predictor–corrector reconstruction; returns `(x [B, 2, H, W], nfe)`.

    `t` runs from 1 to `eps` in `steps` steps; each step applies the corrector (`n_steps_each` times), then the
    predictor, and with `support_mask` keeps `x` on the coil-map support. The result is the last `x̄`
    (`noise_removal`), passed through `finish`.
    """
    c = settings
    predictor, corrector = PREDICTORS.get(c.predictor), CORRECTORS.get(c.corrector)
    counted = CountedScore(score_fn)
    x = initial_state(sde, y, csm, noise)
    data = measurements(c, y, csm, mask)
    aty, csm = data.aty, data.csm
    inside = support(csm).repeat(1, 2, 1, 1) if c.support_mask else None
    x_mean = x
    timesteps = torch.linspace(sde.T, c.eps, c.steps, device=x.device)
    for i in trange(c.steps, disable=not show_progress, desc="PC sampling", leave=False):
        t = timesteps[i].expand(x.shape[0])
        for _ in range(c.n_steps_each):
            x, x_mean = corrector(sde, counted, x, t, aty, csm, mask, snr=c.snr, weight=c.corrector_mse,
                                  noise=noise(x.shape))
        x, x_mean = predictor(sde, counted, x, t, aty, csm, mask, weight=c.mse, noise=noise(x.shape),
                              num_steps=c.steps, project_score=c.project_score)
        if inside is not None:
            x, x_mean = x * inside, x_mean * inside
    x = finish(c, sde, counted, x_mean if c.noise_removal else x, t, data)
    return x, counted.nfe


@SAMPLERS.register("ode", label="ODE", kind="diffusion", settings=ODESettings)
@torch.no_grad()
def ode_sampler(score_fn, sde, y, csm, mask, settings: ODESettings, noise, show_progress: bool = False):
    """Probability-flow ODE with data consistency, integrated by `steps` Euler steps from 1 to `eps`.

    `x ← x + (f − ½g²(s − d))·dt`; the only randomness is the initial state. The result passes through `finish`.
    Returns `(x, nfe)`.
    """
    c = settings
    counted = CountedScore(score_fn)
    x = initial_state(sde, y, csm, noise)
    data = measurements(c, y, csm, mask)
    aty, csm = data.aty, data.csm
    flow = sde.reverse(counted, probability_flow=True)
    timesteps = torch.linspace(sde.T, c.eps, c.steps + 1, device=x.device)
    for i in trange(c.steps, disable=not show_progress, desc="ODE sampling", leave=False):
        t = timesteps[i].expand(x.shape[0])
        dt = timesteps[i + 1] - timesteps[i]
        s = counted(x, t)
        d = data_consistency(x, aty, csm, mask, s, c.mse)
        drift, _ = flow.sde(x, t, score=s - d)
        x = x + drift * dt
    x = finish(c, sde, counted, x, timesteps[-1].expand(x.shape[0]), data)
    return x, counted.nfe


def denoised(sde, x, t, score) -> torch.Tensor:
    """Tweedie's estimate of `x₀` from `x_t` and the projected score `s`: the mean `x + σ(t)² s`, mapped back through
    the forward mean, `x₀ = m + (1/a(t) − 1)·P m` (HFS-SDE: only the high frequencies are rescaled)."""
    mean = x + append_dims(sde.marginal_std(t), x.ndim) ** 2 * score
    return mean + append_dims(1.0 / sde.mean_scale(t) - 1.0, x.ndim) * sde.project(mean)


@SAMPLERS.register("ddim", label="DDIM", kind="diffusion", settings=DDIMSettings)
@torch.no_grad()
def ddim_sampler(score_fn, sde, y, csm, mask, settings: DDIMSettings, noise, show_progress: bool = False):
    """Denoising-diffusion implicit steps in the SDE's diffusing subspace, with data consistency on the denoised
    estimate (as in decomposed diffusion sampling); one network evaluation per step. Returns `(x, nfe)`.

    For `t → t'` on the grid of `steps` times from 1 to `eps`: `s = P score(x, t)`; `x̂₀ = denoised(x, t, s)` (times
    the coil-map support with `support_mask`), then at most `dc_iters` conjugate-gradient steps of
    `argmin ‖A x − y‖² + λ‖x − x̂₀‖²` (λ = `dc_lambda`, or with `noise_aware` `λ_t = ζ σ̂²/σ̄_t²` and the
    discrepancy stop, module docstring); `ε̂ = −σ s`; `x ← mean(x̂₀, t') + √(σ'² − c²)·ε̂ + c·P z` with
    `c = η σ' √(1 − a²σ'²/(a'²σ²))` (η = `eta`: 0 deterministic, 1 ancestral). The result is the last `x̂₀`
    (already denoised), passed through `clean`.
    """
    c = settings
    counted = CountedScore(score_fn)
    x = initial_state(sde, y, csm, noise)
    data = measurements(c, y, csm, mask)
    inside = support(data.csm).repeat(1, 2, 1, 1) if c.support_mask else 1.0
    timesteps = torch.linspace(sde.T, c.eps, c.steps, device=x.device)
    for i in trange(c.steps, disable=not show_progress, desc="DDIM sampling", leave=False):
        t = timesteps[i].expand(x.shape[0])
        s = sde.project(counted(x, t))
        lamda = c.dc_lambda if data.sigma is None else data.noise_lambda(sde, t)
        x0 = data.solve(denoised(sde, x, t, s) * inside, lamda, c.dc_iters)
        if i == c.steps - 1:
            break
        t_next = timesteps[i + 1].expand(x.shape[0])
        std, std_next = sde.marginal_std(t), sde.marginal_std(t_next)
        ratio = (sde.mean_scale(t) * std_next / (sde.mean_scale(t_next) * std)) ** 2
        spread = c.eta * std_next * torch.sqrt((1 - ratio).clamp_min(0))
        eps_hat = -append_dims(std, x.ndim) * s
        x = (sde.marginal_mean(x0, t_next) + append_dims(torch.sqrt(std_next ** 2 - spread ** 2), x.ndim) * eps_hat
             + append_dims(spread, x.ndim) * sde.project(noise(x.shape)))
    return clean(c, x0, data), counted.nfe


def data_response(settings, sde, noise: torch.Tensor, csm: torch.Tensor, mask, sigma: torch.Tensor) -> torch.Tensor:
    """The change of a sampler's result `[B, 1, H, W]` (complex) when its measured k-space changes by `noise`
    (`[B, C, H, W]`), through its last data-consistency operations replayed on the noise alone, the network's
    denoised estimate held fixed (linear in `noise`: the pseudo-replica response of `utils/noise.py`).

    DDIM: the last step's proximal solve, `argmin ‖A δ − ν‖² + λ‖δ‖²` by `dc_iters` conjugate-gradient steps from 0,
    λ its `dc_lambda` or, noise-aware, `λ_ε = ζ σ̂²/σ̄_ε²` at the last time `eps` (`sigma` `[B]` is σ̂); then, for
    every sampler, `clean`: the support mask and `final_dc` (`replace`: `δ + Aᴴ(ν − A δ)`; `cg`: the proximal solve
    around δ with `dc_lambda`, `cg_iters` steps). The discrepancy stop is not replayed (CG from 0 only lengthens
    its iterate's norm with each step, so the full count bounds the stopped solve's response). PC and ODE keep the
    data through score-scaled gradient terms, which have no linear response: only their `final_dc` is replayed.
    """
    data = Measurements(noise, csm, mask, dc_scale=settings.dc_scale)
    b, _, h, w = noise.shape
    delta = torch.zeros((b, 2, h, w), dtype=noise.real.dtype, device=noise.device)
    if isinstance(settings, DDIMSettings):
        lamda = settings.dc_lambda
        if settings.noise_aware:
            data.sigma = sigma
            lamda = data.noise_lambda(sde, torch.full((b,), settings.eps, device=noise.device))
        delta = data.solve(delta, lamda, settings.dc_iters)
    return r2c(clean(settings, delta, data))
