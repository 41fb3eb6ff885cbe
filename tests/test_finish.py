"""Clean-image options of the sampler (`sampling.finish`): support mask, final data consistency, denoising."""
import numpy as np
import pytest
import torch

import sampling
from configs.tiny import get_config
from utils.coils import birdcage_sensitivities
from utils import mri
from utils.masks import make_mask
from runners import build

H = W = 24


def problem(seed=0, batch=2, coils=4, disc=False):
    rng = np.random.default_rng(seed)
    csm = np.broadcast_to(birdcage_sensitivities(coils, (H, W)), (batch, coils, H, W)).copy()
    if disc:
        yy, xx = np.mgrid[-1:1:H * 1j, -1:1:W * 1j]
        csm = csm * (xx ** 2 + yy ** 2 < 0.7)
    truth = (rng.standard_normal((batch, 1, H, W)) + 1j * rng.standard_normal((batch, 1, H, W))) * (
        np.abs(csm).sum(1, keepdims=True) > 0)
    mask = torch.from_numpy(make_mask("uniform", W, acc=4, acs=4).astype(np.float32))
    csm_t = torch.from_numpy(csm.astype(np.complex64))
    truth_t = torch.from_numpy(truth.astype(np.complex64))
    y = mri.sense_forward(truth_t, csm_t, mask)
    guess = mri.c2r(torch.from_numpy(rng.standard_normal((batch, 1, H, W)).astype(np.complex64)) * (
        csm_t.abs().sum(1, keepdim=True) > 0))
    return guess, y, csm_t, mask


def residual(x, y, csm, mask):
    return (torch.linalg.vector_norm(mri.sense_forward(mri.r2c(x), csm, mask) - y) / torch.linalg.vector_norm(y)).item()


def test_replace_is_a_unit_gradient_step_and_exact_for_one_coil():
    guess, y, csm, mask = problem()
    aty = mri.sense_adjoint(y, csm, mask)
    out = sampling.final_data_consistency(guess, sampling.Measurements(y, csm, mask), "replace", 0.0, 0)
    step = guess + mri.c2r(aty - mri.sense_normal(mri.r2c(guess), csm, mask))
    torch.testing.assert_close(out, step, atol=1e-5, rtol=1e-5)
    assert residual(out, y, csm, mask) < 0.7 * residual(guess, y, csm, mask)
    guess, y, csm, mask = problem(coils=1)
    csm = torch.ones_like(csm)
    y = mri.sense_forward(mri.r2c(guess) + 1, csm, mask)
    out = sampling.final_data_consistency(guess, sampling.Measurements(y, csm, mask), "replace", 0.0, 0)
    assert residual(guess, y, csm, mask) > 0.5 and residual(out, y, csm, mask) < 1e-6


def test_cg_final_dc_moves_from_the_data_to_the_prior_with_lambda():
    guess, y, csm, mask = problem(1)
    data = sampling.Measurements(y, csm, mask)
    close = sampling.final_data_consistency(guess, data, "cg", 1e-4, 40)
    far = sampling.final_data_consistency(guess, data, "cg", 1e4, 40)
    assert residual(close, y, csm, mask) < 1e-2 * residual(guess, y, csm, mask)
    torch.testing.assert_close(far, guess, atol=1e-3, rtol=1e-3)
    # The proximal step equals the float64 solution of (AᴴA + λ)x = Aᴴy + λ x₀ (dense normal matrix).
    lam = 0.3
    mid = sampling.final_data_consistency(guess, data, "cg", lam, 200)
    a = dense_operator(csm[0].numpy().astype(np.complex128), mask.numpy())
    x0 = mri.r2c(guess)[0, 0].numpy().astype(np.complex128).ravel()
    rhs = a.conj().T @ y[0].numpy().astype(np.complex128).ravel() + lam * x0
    want = np.linalg.solve(a.conj().T @ a + lam * np.eye(a.shape[1]), rhs).reshape(H, W)
    np.testing.assert_allclose(mri.r2c(mid)[0, 0].numpy(), want, atol=1e-4)
    config = sampler_config()
    config.sampling.final_dc, config.sampling.dc_lambda = "cg", 0.0
    with pytest.raises(ValueError, match="sampling.dc_lambda=0.0 is not allowed: > 0 with sampling.final_dc=.cg."):
        sampling.clean(build.method_settings(config, "pc"), guess, data)
    with pytest.raises(ValueError, match="unknown sampling.final_dc 'exact'"):
        sampling.final_data_consistency(guess, data, "exact", 0.0, 40)


def dense_operator(csm, mask):
    """The SENSE operator `A` of one slice as a dense `[C·H·W, H·W]` float64 matrix (columns: unit images)."""
    eye = np.eye(H * W).reshape(H * W, H, W)
    cols = [np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(csm * e, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
            * mask for e in eye]
    return np.stack([c.ravel() for c in cols], axis=1)


def noisy_problem(sigma, seed=5, coils=6):
    """A slice with complex noise of std `sigma` per measured sample; returns `(truth, y, csm, mask)`."""
    guess, y, csm, mask = problem(seed, batch=1, coils=coils, disc=True)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.complex(torch.randn(y.shape, generator=gen), torch.randn(y.shape, generator=gen)) * sigma / 2 ** 0.5
    return guess, (y + noise) * mask, csm, mask


def test_noise_aware_solve_stops_at_the_discrepancy_level():
    sigma = 0.05
    guess, y, csm, mask = noisy_problem(sigma)
    data = sampling.Measurements(y, csm, mask, noise_aware=True, discrepancy=1.0)
    measured = int(mask.sum()) * y.shape[1]
    assert 0.8 * sigma < float(data.sigma[0]) < 1.5 * sigma
    out = data.solve(guess, 0.0, 200)
    misfit = torch.linalg.vector_norm(mri.sense_forward(mri.r2c(out), csm, mask) - y).item()
    target = float(data.sigma[0]) * measured ** 0.5
    assert 0.8 * target < misfit <= target * 1.0001  # stopped as soon as the noise level was reached
    exact = sampling.Measurements(y, csm, mask).solve(guess, 0.0, 200)  # without the stop: fits the noise too
    overfit = torch.linalg.vector_norm(mri.sense_forward(mri.r2c(exact), csm, mask) - y).item()
    assert overfit < 0.95 * target
    data_fits = sampling.Measurements(y, csm, mask, noise_aware=True, discrepancy=1e3)
    assert torch.equal(data_fits.solve(guess, 0.0, 50), guess)  # already within the noise: unchanged


def test_solve_is_per_sample_and_matches_float64_on_odd_sizes():
    """The solver works in FFT order (no shift per iteration): on an odd matrix it still equals the dense float64
    proximal solution, and a batch whose samples stop at different steps equals the samples solved one by one."""
    rng = np.random.default_rng(3)
    h, w, coils = 15, 13, 3
    csm = (rng.standard_normal((2, coils, h, w)) + 1j * rng.standard_normal((2, coils, h, w))) / 2
    mask = (rng.random(w) < 0.5).astype(np.float64)
    truth = rng.standard_normal((2, 1, h, w)) + 1j * rng.standard_normal((2, 1, h, w))
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(csm * truth, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    k = (k + [[[[0.01]]], [[[0.3]]]] * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))) * mask
    y, csm_t = torch.from_numpy(k.astype(np.complex64)), torch.from_numpy(csm.astype(np.complex64))
    mask_t = torch.from_numpy(mask.astype(np.float32))
    guess = mri.c2r(torch.from_numpy(rng.standard_normal((2, 1, h, w)).astype(np.complex64)))
    lam = 0.2
    out = sampling.Measurements(y, csm_t, mask_t).solve(guess, lam, 300)
    eye = np.eye(h * w).reshape(h * w, h, w)
    a = np.stack([(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(csm[0] * e, axes=(-2, -1)), norm="ortho"),
                                   axes=(-2, -1)) * mask).ravel() for e in eye], axis=1)
    x0 = mri.r2c(guess)[0, 0].numpy().astype(np.complex128).ravel()
    want = np.linalg.solve(a.conj().T @ a + lam * np.eye(h * w), a.conj().T @ k[0].ravel() + lam * x0)
    np.testing.assert_allclose(mri.r2c(out)[0, 0].numpy(), want.reshape(h, w), atol=1e-4)
    data = sampling.Measurements(y, csm_t, mask_t, noise_aware=True, discrepancy=1.0)
    both = data.solve(guess, 0.0, 60)
    for i in range(2):
        alone = sampling.Measurements(y[i:i + 1], csm_t[i:i + 1], mask_t, noise_aware=True, discrepancy=1.0)
        torch.testing.assert_close(both[i:i + 1], alone.solve(guess[i:i + 1], 0.0, 60), atol=1e-5, rtol=1e-4)


def test_noise_lambda_follows_the_noise_and_the_diffusion_level():
    guess, y, csm, mask = noisy_problem(0.05)
    config = sampler_config("vpsde")
    sde = build.make_sde(config)
    data = sampling.Measurements(y, csm, mask, noise_aware=True, dc_scale=2.0)
    t = torch.tensor([0.2, 0.7])
    level = sde.marginal_std(t) / sde.mean_scale(t)
    torch.testing.assert_close(data.noise_lambda(sde, t), 2.0 * data.sigma ** 2 / level ** 2)
    assert data.noise_lambda(sde, t)[0] > data.noise_lambda(sde, t)[1]


def _noisy_run(method, final_dc):
    config = sampler_config("hfssde")
    config.sampling.method, config.sampling.noise_aware, config.sampling.final_dc = method, True, final_dc
    config.sampling.dc_iters = config.sampling.cg_iters = 30
    sde = build.make_sde(config)
    _, y, csm, mask = noisy_problem(0.05)
    out, _ = sampling.SAMPLERS.get(method)(score, sde, y, csm, mask, build.method_settings(config),
                                           sampling.SampleNoise([0], "cpu"))
    misfit = torch.linalg.vector_norm(mri.sense_forward(mri.r2c(out), csm, mask) - y).item()
    return out, misfit, float(sampling.Measurements(y, csm, mask, noise_aware=True).target[0])


def test_noise_aware_ddim_fits_the_data_to_the_noise_level():
    out, misfit, target = _noisy_run("ddim", "cg")
    assert torch.isfinite(out).all() and misfit <= 1.0001 * target


@pytest.mark.parametrize("method", ["pc", "ode"])
def test_noise_aware_final_step_moves_pc_and_ode_towards_the_data(method):
    out, misfit, target = _noisy_run(method, "cg")
    _, misfit_none, _ = _noisy_run(method, "none")
    assert torch.isfinite(out).all() and target < misfit < 0.5 * misfit_none


def sampler_config(name="hfssde", steps=5):
    config = get_config(name)
    config.sampling.N = steps
    config.data.image_size = H
    return config


def score(x, t):
    return -(x - 0.3) / (0.5 + t[:, None, None, None])


@pytest.mark.parametrize("name", ["hfssde", "vpsde"])
def test_support_mask_keeps_the_image_on_the_maps(name):
    config = sampler_config(name)
    config.sampling.support_mask = True
    sde = build.make_sde(config)
    _, y, csm, mask = problem(2, disc=True)
    out, _ = sampling.pc_sampler(score, sde, y, csm, mask, build.method_settings(config, "pc"),
                                 sampling.SampleNoise([0, 1], "cpu"))
    outside = (csm.abs().sum(1, keepdim=True) == 0).repeat(1, 2, 1, 1)
    assert outside.any() and out[outside].abs().max() == 0 and out[~outside].abs().max() > 0


def test_denoise_is_tweedie_for_a_point_mass_and_costs_one_evaluation():
    config = sampler_config("vpsde")
    config.sampling.denoise = True
    sde = build.make_sde(config)
    guess, y, csm, mask = problem(3)
    x0 = torch.full_like(guess, 0.7)
    t = torch.full((guess.shape[0],), 0.2)

    def point_mass_score(x, t_):
        mean, std = sde.marginal_prob(x0, t_)
        return -(x - mean) / std[:, None, None, None] ** 2

    out = sampling.finish(build.method_settings(config, "pc"), sde, point_mass_score, guess, t,
                          sampling.Measurements(y, csm, mask))
    torch.testing.assert_close(out, sde.marginal_prob(x0, t)[0], atol=1e-4, rtol=1e-4)
    _, nfe = sampling.pc_sampler(score, sde, y, csm, mask, build.method_settings(config, "pc"),
                                 sampling.SampleNoise([0, 1], "cpu"))
    assert nfe == 2 * config.sampling.N + 1


def test_options_off_leave_the_result_unchanged():
    config = sampler_config()
    sde = build.make_sde(config)
    guess, y, csm, mask = problem(4, disc=True)
    out = sampling.finish(build.method_settings(config, "pc"), sde, score, guess, torch.full((2,), 1e-3),
                          sampling.Measurements(y, csm, mask))
    assert torch.equal(out, guess)


@pytest.mark.parametrize("name", ["hfssde", "vpsde", "vesde", "subvpsde"])
def test_mean_scale_describes_the_forward_mean_and_denoised_inverts_it(name):
    config = sampler_config(name)
    sde = build.make_sde(config)
    x0 = torch.randn(2, 2, H, W)
    t = torch.tensor([0.3, 0.8])
    a = sde.mean_scale(t)[:, None, None, None]
    torch.testing.assert_close(sde.marginal_mean(x0, t), x0 + (a - 1) * sde.project(x0), atol=1e-5, rtol=1e-5)
    x_t = sde.marginal_mean(x0, t) + sde.marginal_std(t)[:, None, None, None] * sde.project(torch.randn_like(x0))
    mean, std = sde.marginal_prob(x0, t)
    score = -sde.project(x_t - mean) / std[:, None, None, None] ** 2  # exact score of a point mass at x0
    torch.testing.assert_close(sampling.denoised(sde, x_t, t, score), x0, atol=1e-4, rtol=1e-4)


def test_ddim_with_the_true_prior_recovers_the_truth_in_few_steps():
    config = sampler_config("hfssde", steps=10)
    config.sampling.method = "ddim"
    sde = build.make_sde(config)
    _, _, csm, mask = problem(5, batch=1)
    rng = np.random.default_rng(0)
    truth = torch.from_numpy((rng.standard_normal((1, 1, H, W)) + 0j).astype(np.complex64))
    y = mri.sense_forward(truth, csm, mask)
    x0 = mri.c2r(truth)

    def point_mass_score(x, t):
        mean, std = sde.marginal_prob(x0, t)
        return -sde.project(x - mean) / std[:, None, None, None] ** 2

    out, nfe = sampling.ddim_sampler(point_mass_score, sde, y, csm, mask, build.method_settings(config, "ddim"),
                                     sampling.SampleNoise([0], "cpu"))
    assert nfe == 10
    assert torch.linalg.vector_norm(out - x0) / torch.linalg.vector_norm(x0) < 1e-3


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_batch_equals_single_runs(eta):
    config = sampler_config("hfssde", steps=4)
    config.sampling.eta = eta
    sde = build.make_sde(config)
    _, y, csm, mask = problem(6, batch=2)
    batch, _ = sampling.ddim_sampler(score, sde, y, csm, mask, build.method_settings(config, "ddim"),
                                     sampling.SampleNoise([3, 4], "cpu"))
    for i, seed in enumerate([3, 4]):
        single, _ = sampling.ddim_sampler(score, sde, y[i:i + 1], csm[i:i + 1], mask, build.method_settings(config,
                                          "ddim"), sampling.SampleNoise([seed], "cpu"))
        torch.testing.assert_close(batch[i:i + 1], single, atol=1e-4, rtol=1e-4)
