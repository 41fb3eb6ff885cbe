"""Clean-image options of the sampler (`sampling.finish`): support mask, final data consistency, denoising."""
import numpy as np
import pytest
import torch

import sampling
import sde_lib
from configs.tiny import get_config
from utils.coils import birdcage_sensitivities
from utils import mri
from utils.masks import make_mask

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
    out = sampling.final_data_consistency(guess, aty, csm, mask, "replace", 0.0, 0)
    step = guess + mri.c2r(aty - mri.sense_normal(mri.r2c(guess), csm, mask))
    torch.testing.assert_close(out, step, atol=1e-5, rtol=1e-5)
    assert residual(out, y, csm, mask) < 0.7 * residual(guess, y, csm, mask)
    guess, y, csm, mask = problem(coils=1)
    csm = torch.ones_like(csm)
    y = mri.sense_forward(mri.r2c(guess) + 1, csm, mask)
    out = sampling.final_data_consistency(guess, mri.sense_adjoint(y, csm, mask), csm, mask, "replace", 0.0, 0)
    assert residual(guess, y, csm, mask) > 0.5 and residual(out, y, csm, mask) < 1e-6


def test_cg_final_dc_moves_from_the_data_to_the_prior_with_lambda():
    guess, y, csm, mask = problem(1)
    aty = mri.sense_adjoint(y, csm, mask)
    close = sampling.final_data_consistency(guess, aty, csm, mask, "cg", 1e-4, 40)
    far = sampling.final_data_consistency(guess, aty, csm, mask, "cg", 1e4, 40)
    assert residual(close, y, csm, mask) < 1e-2 * residual(guess, y, csm, mask)
    torch.testing.assert_close(far, guess, atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="dc_lambda > 0"):
        sampling.final_data_consistency(guess, aty, csm, mask, "cg", 0.0, 40)
    with pytest.raises(ValueError, match="unknown sampling.final_dc 'exact'"):
        sampling.final_data_consistency(guess, aty, csm, mask, "exact", 0.0, 40)


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
    sde = sde_lib.get_sde(config)
    _, y, csm, mask = problem(2, disc=True)
    out, _ = sampling.pc_sampler(config, sde, score, y, csm, mask, sampling.SampleNoise([0, 1], "cpu"))
    outside = (csm.abs().sum(1, keepdim=True) == 0).repeat(1, 2, 1, 1)
    assert outside.any() and out[outside].abs().max() == 0 and out[~outside].abs().max() > 0


def test_denoise_is_tweedie_for_a_point_mass_and_costs_one_evaluation():
    config = sampler_config("vpsde")
    config.sampling.denoise = True
    sde = sde_lib.get_sde(config)
    guess, y, csm, mask = problem(3)
    x0 = torch.full_like(guess, 0.7)
    t = torch.full((guess.shape[0],), 0.2)

    def point_mass_score(x, t_):
        mean, std = sde.marginal_prob(x0, t_)
        return -(x - mean) / std[:, None, None, None] ** 2

    aty = mri.sense_adjoint(y, csm, mask)
    out = sampling.finish(config, sde, point_mass_score, guess, t, aty, csm, mask)
    torch.testing.assert_close(out, sde.marginal_prob(x0, t)[0], atol=1e-4, rtol=1e-4)
    _, nfe = sampling.pc_sampler(config, sde, score, y, csm, mask, sampling.SampleNoise([0, 1], "cpu"))
    assert nfe == 2 * config.sampling.N + 1


def test_options_off_leave_the_result_unchanged():
    config = sampler_config()
    sde = sde_lib.get_sde(config)
    guess, y, csm, mask = problem(4, disc=True)
    aty = mri.sense_adjoint(y, csm, mask)
    out = sampling.finish(config, sde, score, guess, torch.full((2,), 1e-3), aty, csm, mask)
    assert torch.equal(out, guess)


@pytest.mark.parametrize("name", ["hfssde", "vpsde", "vesde", "subvpsde"])
def test_mean_scale_describes_the_forward_mean_and_denoised_inverts_it(name):
    config = sampler_config(name)
    sde = sde_lib.get_sde(config)
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
    sde = sde_lib.get_sde(config)
    _, _, csm, mask = problem(5, batch=1)
    rng = np.random.default_rng(0)
    truth = torch.from_numpy((rng.standard_normal((1, 1, H, W)) + 0j).astype(np.complex64))
    y = mri.sense_forward(truth, csm, mask)
    x0 = mri.c2r(truth)

    def point_mass_score(x, t):
        mean, std = sde.marginal_prob(x0, t)
        return -sde.project(x - mean) / std[:, None, None, None] ** 2

    out, nfe = sampling.ddim_sampler(config, sde, point_mass_score, y, csm, mask, sampling.SampleNoise([0], "cpu"))
    assert nfe == 10
    assert torch.linalg.vector_norm(out - x0) / torch.linalg.vector_norm(x0) < 1e-3


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_batch_equals_single_runs(eta):
    config = sampler_config("hfssde", steps=4)
    config.sampling.eta = eta
    sde = sde_lib.get_sde(config)
    _, y, csm, mask = problem(6, batch=2)
    batch, _ = sampling.ddim_sampler(config, sde, score, y, csm, mask, sampling.SampleNoise([3, 4], "cpu"))
    for i, seed in enumerate([3, 4]):
        single, _ = sampling.ddim_sampler(config, sde, score, y[i:i + 1], csm[i:i + 1], mask,
                                          sampling.SampleNoise([seed], "cpu"))
        torch.testing.assert_close(batch[i:i + 1], single, atol=1e-4, rtol=1e-4)
