"""Sampler steps against an independent float64 numpy version of the formulas in docs/ARCHITECTURE.md, and sampler
invariants."""
import math

import numpy as np
import pytest
import torch

import sampling
from configs.tiny import get_config
from tests.conftest import np_dc, np_hp, np_ifft2c, np_norm, to_r
from utils import mri
from utils.masks import make_mask
from runners import build

H = W = 32
N = 1000
B0, B1 = 0.1, 20.0


# ---- independent numpy reference (float64) ----------------------------------------------------------------------
def np_score(x, t):
    return -(x - 0.3) / (0.5 + t[:, None, None, None])


def np_beta(t):
    return (B0 + t * (B1 - B0))[:, None, None, None]


def np_langevin(x, t, y, csm, mask, lf, noise, snr, w, hfs):
    s = np_score(x, t)
    if hfs:
        s = np_hp(s, lf)
    d = np_dc(x, y, csm, mask, s, w)
    alpha = 1 - np.linspace(B0 / N, B1 / N, N)[(t * (N - 1)).astype(int)][:, None, None, None]
    eps = 2 * alpha * (snr * np_norm(noise) / np_norm(s)) ** 2
    x_mean = x + eps * (s - d)
    n = np_hp(noise, lf) if hfs else noise
    return x_mean + np.sqrt(2 * eps) * n, x_mean


def np_euler_maruyama(x, t, y, csm, mask, lf, noise, w, steps, hfs):
    dt = -1.0 / steps
    s = np_score(x, t)
    d = np_dc(x, y, csm, mask, s, w)
    f = -0.5 * np_beta(t) * (np_hp(x, lf) if hfs else x)
    g = np.sqrt(np_beta(t))
    x_mean = x + (f - g ** 2 * (s - d)) * dt
    z = np_hp(noise, lf) if hfs else noise
    return x_mean + g * np.sqrt(-dt) * z, x_mean


# ---- fixtures ---------------------------------------------------------------------------------------------------
def problem(seed=0, batch=2, coils=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 2, H, W))
    csm = rng.standard_normal((batch, coils, H, W)) + 1j * rng.standard_normal((batch, coils, H, W))
    mask = make_mask("uniform", H, acc=4, acs=6).astype(np.float64)
    y = mask * (rng.standard_normal((batch, coils, H, W)) + 1j * rng.standard_normal((batch, coils, H, W)))
    noise = rng.standard_normal(x.shape)
    t = np.array([0.95, 0.31])[:batch]
    return x, csm, mask, y, noise, t


def torchify(*arrays):
    out = []
    for a in arrays:
        out.append(torch.from_numpy(a.astype(np.complex64 if np.iscomplexobj(a) else np.float32)))
    return out


def torch_score(x, t):
    return -(x - 0.3) / (0.5 + t[:, None, None, None])


def rel_err(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("name", ["hfssde", "vpsde"])
def test_langevin_step_matches_numpy(name):
    sde = build.make_sde(get_config(name))
    x, csm, mask, y, noise, t = problem()
    lf = make_mask("low_frequency", H, acs=4).astype(np.float64)
    xt, csmt, maskt, yt, noiset, tt = torchify(x, csm, mask, y, noise, t)
    aty = mri.sense_adjoint(yt, csmt, maskt)
    got, got_mean = sampling.langevin_corrector_step(sde, torch_score, xt, tt, aty, csmt, maskt, snr=0.16,
                                                     weight=0.1, noise=noiset)
    want, want_mean = np_langevin(x, tt.double().numpy(), y, csm, mask, lf, noise, 0.16, 0.1, name == "hfssde")
    assert rel_err(got.numpy(), want) < 1e-5
    assert rel_err(got_mean.numpy(), want_mean) < 1e-5


@pytest.mark.parametrize("name", ["hfssde", "vpsde"])
def test_euler_maruyama_step_matches_numpy(name):
    sde = build.make_sde(get_config(name))
    x, csm, mask, y, noise, t = problem(1)
    lf = make_mask("low_frequency", H, acs=4).astype(np.float64)
    xt, csmt, maskt, yt, noiset, tt = torchify(x, csm, mask, y, noise, t)
    aty = mri.sense_adjoint(yt, csmt, maskt)
    got, got_mean = sampling.euler_maruyama_step(sde, torch_score, xt, tt, aty, csmt, maskt, weight=2.5,
                                                 noise=noiset, num_steps=100)
    want, want_mean = np_euler_maruyama(x, tt.double().numpy(), y, csm, mask, lf, noise, 2.5, 100,
                                        name == "hfssde")
    assert rel_err(got.numpy(), want) < 1e-5
    assert rel_err(got_mean.numpy(), want_mean) < 1e-5


def test_data_consistency_is_per_sample():
    x, csm, mask, y, _, _ = problem(2)
    xt, csmt, maskt, yt = torchify(x, csm, mask, y)
    s = torch.randn_like(xt)
    aty = mri.sense_adjoint(yt, csmt, maskt)
    both = sampling.data_consistency(xt, aty, csmt, maskt, s, 0.5)
    first = sampling.data_consistency(xt[:1], aty[:1], csmt[:1], maskt, s[:1], 0.5)
    assert torch.allclose(both[:1], first, rtol=1e-5, atol=1e-6)
    assert torch.allclose(torch.linalg.vector_norm(both.flatten(1), dim=1),
                          0.5 * torch.linalg.vector_norm(s.flatten(1), dim=1), rtol=1e-5)


def sampler_config(name="hfssde", steps=6):
    config = get_config(name)
    config.sampling.N = steps
    return config


def test_hfs_low_frequencies_are_kept_without_data_consistency():
    config = sampler_config()
    config.sampling.mse = config.sampling.corrector_mse = 0.0
    sde = build.make_sde(config)
    x, csm, mask, y, _, _ = problem(3)
    _, csmt, maskt, yt = torchify(x, csm, mask, y)
    noise = sampling.SampleNoise([0, 1], "cpu")
    x_t = sampling.initial_state(sde, yt, csmt, sampling.SampleNoise([0, 1], "cpu"))

    def highpass_score(x_, t_):
        return sde.high_pass(-x_ * (1 + t_[:, None, None, None]))

    out, nfe = sampling.pc_sampler(highpass_score, sde, yt, csmt, maskt, build.method_settings(config, "pc"), noise)
    lf = sde.lowfreq_mask
    diff = lf * (mri.fft2c(mri.r2c(out)) - mri.fft2c(mri.r2c(x_t)))
    assert diff.abs().max() / (lf * mri.fft2c(mri.r2c(x_t))).abs().max() < 1e-5
    assert nfe == 2 * 6


def test_hfs_initial_state_holds_the_measured_low_frequencies():
    config = sampler_config()
    sde = build.make_sde(config)
    x, csm, mask, y, _, _ = problem(4)
    _, csmt, maskt, yt = torchify(x, csm, mask, y)
    x_t = sampling.initial_state(sde, yt, csmt, sampling.SampleNoise([0, 1], "cpu"))
    lf = sde.lowfreq_mask
    expected = mri.sense_adjoint(yt, csmt, lf)
    assert torch.allclose(mri.fft2c(mri.r2c(x_t)) * lf, mri.fft2c(expected) * lf, atol=1e-4)


@pytest.mark.parametrize("name,predictor", [("hfssde", "euler_maruyama"), ("vpsde", "reverse_diffusion"),
                                            ("vesde", "reverse_diffusion")])
def test_batch_equals_single_runs(name, predictor):
    config = sampler_config(name)
    config.sampling.predictor = predictor
    sde = build.make_sde(config)
    x, csm, mask, y, _, _ = problem(5, batch=3)
    _, csmt, maskt, yt = torchify(x, csm, mask, y)
    batch, _ = sampling.pc_sampler(torch_score, sde, yt, csmt, maskt, build.method_settings(config, "pc"),
                                   sampling.SampleNoise([7, 8, 9], "cpu"))
    for i, seed in enumerate([7, 8, 9]):
        single, _ = sampling.pc_sampler(torch_score, sde, yt[i:i + 1], csmt[i:i + 1], maskt,
                                        build.method_settings(config, "pc"), sampling.SampleNoise([seed], "cpu"))
        assert rel_err(batch[i:i + 1].numpy(), single.numpy()) < 1e-4


def gaussian_prior_score(sde, mu, sigma0):
    """Exact score of x_t when x_0 ~ N(mu, sigma0² I) (HFS: on the high-frequency subspace)."""
    def score(x, t):
        c = sde.mean_coeff(t) if hasattr(sde, "mean_coeff") else torch.exp(sde.log_mean_coeff(t))
        var = (c ** 2 * sigma0 ** 2 + sde.marginal_std(t) ** 2)[:, None, None, None]
        mean = sde.marginal_mean(mu.expand_as(x), t)
        return -sde.project(x - mean) / var
    return score


def phantom(size):
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    img = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1).astype(float)
    img -= 0.6 * (((xx - 0.25) / 0.25) ** 2 + (yy / 0.45) ** 2 < 1)
    img += 0.5 * ((xx + 0.3) ** 2 + (yy + 0.2) ** 2 < 0.05)
    img[::4, :] *= 1.1
    return img * np.exp(1j * 0.5 * xx)


def psnr(ref, img):
    return 20 * np.log10(np.abs(ref).max() / np.sqrt(np.mean((np.abs(ref) - np.abs(img)) ** 2)))


@pytest.mark.parametrize("name", ["hfssde", "vpsde"])
def test_data_consistency_recovers_what_the_prior_lacks(name):
    """The prior is a Gaussian around the phantom's outline (no inner structure; 3 dB below zero-filled): only the
    data-consistency term can put the structure back, so without it (mse = corrector_mse = 0) this test fails."""
    import sigpy.mri
    config = sampler_config(name, steps=100)
    config.sampling.mse, config.sampling.corrector_mse = 2.5, 1.0
    sde = build.make_sde(config)
    truth = phantom(H)
    yy, xx = np.mgrid[-1:1:H * 1j, -1:1:W * 1j]
    outline = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1) * np.exp(1j * 0.5 * xx)
    csm = sigpy.mri.birdcage_maps((4, H, W)).astype(np.complex64)
    mask = make_mask("uniform", H, acc=4, acs=6)
    csmt, maskt = torch.from_numpy(csm)[None], torch.from_numpy(mask)
    yt = mri.sense_forward(torch.from_numpy(truth.astype(np.complex64))[None, None], csmt, maskt)
    mu = mri.c2r(torch.from_numpy(outline.astype(np.complex64))[None, None])
    out, _ = sampling.pc_sampler(gaussian_prior_score(sde, mu, 0.1), sde, yt, csmt, maskt,
                                 build.method_settings(config, "pc"), sampling.SampleNoise([0], "cpu"))
    recon = mri.r2c(out)[0, 0].numpy()
    zero_filled = mri.sense_adjoint(yt, csmt, maskt)[0, 0].numpy()
    assert psnr(truth, recon) >= psnr(truth, zero_filled) + 2.5
    assert psnr(truth, recon) >= psnr(truth, outline) + 5


def noise_draws(seeds, shape, count):
    """The first `count` draws of `shape` that `SampleNoise(seeds)` gives, as float64 numpy arrays."""
    noise = sampling.SampleNoise(seeds, "cpu")
    return [noise(shape).double().numpy() for _ in range(count)]


def test_ode_sampler_matches_numpy_euler_steps():
    """Three Euler steps of `x ← x + (f − ½g²(s − d))·dt` on the grid `linspace(1, eps, 4)`, HFS-SDE, against numpy."""
    config = sampler_config(steps=3)
    sde = build.make_sde(config)
    x, csm, mask, y, _, _ = problem(6)
    _, csmt, maskt, yt = torchify(x, csm, mask, y)
    lf = sde.lowfreq_mask[0, 0].double().numpy()
    out, nfe = sampling.ode_sampler(torch_score, sde, yt, csmt, maskt, build.method_settings(config, "ode"),
                                    sampling.SampleNoise([1, 2], "cpu"))
    z = noise_draws([1, 2], (2, 2, H, W), 1)[0]
    xs = to_r(np.sum(np.conj(csm) * np_ifft2c(lf * y), 1)) + np_hp(z, lf)  # measured low frequencies + M̂z
    grid = np.linspace(1.0, config.sampling.eps, 4)
    for i in range(3):
        t = np.full(2, grid[i])
        s = np_score(xs, t)
        d = np_dc(xs, y, csm, mask, s, config.sampling.mse)
        xs = xs + (-0.5 * np_beta(t) * np_hp(xs, lf) - 0.5 * np_beta(t) * (s - d)) * (grid[i + 1] - grid[i])
    assert nfe == 3 and rel_err(out.double().numpy(), xs) < 1e-4


@pytest.mark.parametrize("name", ["hfssde", "vpsde"])
def test_reverse_diffusion_step_matches_numpy(name):
    """The ancestral step `x̄ = x − (f_i − G_i²(s − d))`, `x = x̄ + G_i·P z` with `f_i = (√α_i − 1)·Px`,
    `G_i = √β_i` of the discrete schedule at `i = ⌊t(N − 1)⌋`."""
    sde = build.make_sde(get_config(name))
    x, csm, mask, y, noise, t = problem(8)
    lf = make_mask("low_frequency", H, acs=4).astype(np.float64)
    xt, csmt, maskt, yt, noiset, tt = torchify(x, csm, mask, y, noise, t)
    aty = mri.sense_adjoint(yt, csmt, maskt)
    got, got_mean = sampling.reverse_diffusion_step(sde, torch_score, xt, tt, aty, csmt, maskt, weight=0.7,
                                                    noise=noiset, num_steps=100)
    hfs = name == "hfssde"
    project = (lambda v: np_hp(v, lf)) if hfs else (lambda v: v)
    i = (tt.double().numpy() * (N - 1)).astype(int)
    beta = np.linspace(B0 / N, B1 / N, N)[i][:, None, None, None]
    s = np_score(x, tt.double().numpy())
    d = np_dc(x, y, csm, mask, s, 0.7)
    want_mean = x - ((np.sqrt(1 - beta) - 1) * project(x) - beta * (s - d))
    want = want_mean + np.sqrt(beta) * project(noise)
    assert rel_err(got_mean.numpy(), want_mean) < 1e-5 and rel_err(got.numpy(), want) < 1e-5


@pytest.mark.parametrize("noise_removal", [True, False])
def test_n_steps_each_and_noise_removal_match_numpy(noise_removal):
    """One step of two Langevin corrections, then the Euler–Maruyama predictor: the result is the predictor's `x̄`
    (`noise_removal`) or its noisy `x`; noise is drawn start, correction, correction, predictor."""
    config = sampler_config(steps=1)
    config.sampling.n_steps_each, config.sampling.noise_removal = 2, noise_removal
    sde = build.make_sde(config)
    x, csm, mask, y, _, _ = problem(9)
    _, csmt, maskt, yt = torchify(x, csm, mask, y)
    lf = sde.lowfreq_mask[0, 0].double().numpy()
    settings = build.method_settings(config, "pc")
    out, nfe = sampling.pc_sampler(torch_score, sde, yt, csmt, maskt, settings, sampling.SampleNoise([3, 4], "cpu"))
    z0, z1, z2, z3 = noise_draws([3, 4], (2, 2, H, W), 4)
    xs = to_r(np.sum(np.conj(csm) * np_ifft2c(lf * y), 1)) + np_hp(z0, lf)
    t = np.ones(2)
    for z in (z1, z2):
        xs, _ = np_langevin(xs, t, y, csm, mask, lf, z, settings.snr, settings.corrector_mse, True)
    xs, xs_mean = np_euler_maruyama(xs, t, y, csm, mask, lf, z3, settings.mse, 1, True)
    assert nfe == 3 and rel_err(out.double().numpy(), xs_mean if noise_removal else xs) < 1e-4


@pytest.mark.parametrize("name", ["hfssde", "vpsde"])
def test_ode_drift_vanishes_for_standard_normal_data(name):
    """Data x₀ ~ N(0, I) (on the diffusing subspace) keep the marginal N(0, I), score −Px, so the probability-flow
    drift `f − ½g²s = −½βPx + ½βPx` is zero: without data consistency the ODE leaves its start unchanged."""
    config = sampler_config(name, steps=20)
    config.sampling.mse = 0.0
    sde = build.make_sde(config)
    x, csm, mask, y, _, _ = problem(10)
    _, csmt, maskt, yt = torchify(x, csm, mask, y)
    start = sampling.initial_state(sde, yt, csmt, sampling.SampleNoise([3, 4], "cpu"))
    out, _ = sampling.ode_sampler(lambda x_, t_: -sde.project(x_), sde, yt, csmt, maskt, build.method_settings(config,
                                  "ode"), sampling.SampleNoise([3, 4], "cpu"))
    torch.testing.assert_close(out, start, rtol=0, atol=1e-5)


def test_ode_integrates_the_vp_drift_from_one_to_eps():
    """With a zero score the VP probability-flow ODE is `dx/dt = −½β(t)x`, so integrating from t = 1 down to ε
    gives `x(ε) = x(1)·e^{c(ε) − c(1)}` (1000 Euler steps: within 2 %)."""
    config = sampler_config("vpsde", steps=1000)
    config.sampling.mse = 0.0
    sde = build.make_sde(config)
    x, csm, mask, y, _, _ = problem(11)
    _, csmt, maskt, yt = torchify(x, csm, mask, y)
    start = sampling.initial_state(sde, yt, csmt, sampling.SampleNoise([5, 6], "cpu"))
    out, _ = sampling.ode_sampler(lambda x_, t_: torch.zeros_like(x_), sde, yt, csmt, maskt,
                                  build.method_settings(config, "ode"), sampling.SampleNoise([5, 6], "cpu"))
    eps = config.sampling.eps
    growth = math.exp(0.25 * (1 - eps ** 2) * (B1 - B0) + 0.5 * (1 - eps) * B0)  # e^{c(ε) − c(1)}, about 156
    torch.testing.assert_close(out, start * growth, rtol=2e-2, atol=0)


def test_unknown_predictor_and_corrector():
    config = sampler_config()
    sde = build.make_sde(config)
    x, csm, mask, y, _, _ = problem(7)
    _, csmt, maskt, yt = torchify(x, csm, mask, y)
    config.sampling.predictor = "heun"
    with pytest.raises(ValueError, match="unknown predictor 'heun'; choose one of"):
        sampling.pc_sampler(torch_score, sde, yt, csmt, maskt, build.method_settings(config, "pc"),
                            sampling.SampleNoise([0, 1], "cpu"))
    config.sampling.predictor, config.sampling.corrector = "euler_maruyama", "ald"
    with pytest.raises(ValueError, match="unknown corrector 'ald'"):
        sampling.pc_sampler(torch_score, sde, yt, csmt, maskt, build.method_settings(config, "pc"),
                            sampling.SampleNoise([0, 1], "cpu"))
