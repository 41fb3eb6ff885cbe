"""SDEs against float64 numpy formulas (docs/ARCHITECTURE.md, "The mathematics") and HFS-SDE invariants."""
import math

import numpy as np
import pytest
import torch

from configs.tiny import get_config
from tests.conftest import np_fft2c, np_ifft2c
from utils import mri
from runners import build

B0, B1 = 0.1, 20.0


def _c(t):
    return -0.25 * t ** 2 * (B1 - B0) - 0.5 * t * B0


def _np_highpass(x, lf):
    im = np_ifft2c((1 - lf) * np_fft2c(x[:, 0] + 1j * x[:, 1]))
    return np.stack([im.real, im.imag], 1)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 32, 32))
    t = np.array([1e-3, 0.4, 1.0])
    return x, t, torch.from_numpy(x).float(), torch.from_numpy(t).float()


def _sde(name, **overrides):
    config = get_config(name)
    for key, value in overrides.items():
        group, attr = key.split(".")
        setattr(getattr(config, group), attr, value)
    return build.make_sde(config)


def test_vp(data):
    x, t, xt, tt = data
    sde = _sde("vpsde")
    mean, std = sde.marginal_prob(xt, tt)
    np.testing.assert_allclose(mean.numpy(), np.exp(_c(t))[:, None, None, None] * x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), np.sqrt(1 - np.exp(2 * _c(t))), rtol=1e-5)
    drift, diffusion = sde.sde(xt, tt)
    beta = B0 + t * (B1 - B0)
    np.testing.assert_allclose(drift.numpy(), -0.5 * beta[:, None, None, None] * x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(diffusion.numpy(), np.sqrt(beta), rtol=1e-6)
    i = (t * 999).astype(int)
    betas = np.linspace(B0 / 1000, B1 / 1000, 1000)
    f, g = sde.discretize(xt, tt)
    np.testing.assert_allclose(f.numpy(), (np.sqrt(1 - betas[i]) - 1)[:, None, None, None] * x, rtol=1e-4,
                               atol=1e-7)
    np.testing.assert_allclose(g.numpy(), np.sqrt(betas[i]), rtol=1e-5)
    np.testing.assert_allclose(sde.langevin_alpha(tt).numpy(), 1 - betas[i], rtol=1e-6)


def test_subvp(data):
    x, t, xt, tt = data
    sde = _sde("subvpsde")
    mean, std = sde.marginal_prob(xt, tt)
    np.testing.assert_allclose(mean.numpy(), np.exp(_c(t))[:, None, None, None] * x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), 1 - np.exp(2 * _c(t)), rtol=1e-4)
    _, diffusion = sde.sde(xt, tt)
    beta = B0 + t * (B1 - B0)
    np.testing.assert_allclose(diffusion.numpy(), np.sqrt(beta * (1 - np.exp(-2 * B0 * t - (B1 - B0) * t ** 2))),
                               rtol=1e-4)


def test_ve(data):
    x, t, xt, tt = data
    sde = _sde("vesde")
    mean, std = sde.marginal_prob(xt, tt)
    np.testing.assert_array_equal(mean.numpy(), xt.numpy())
    np.testing.assert_allclose(std.numpy(), 0.01 * (348 / 0.01) ** t, rtol=1e-5)
    drift, diffusion = sde.sde(xt, tt)
    assert not drift.any()
    np.testing.assert_allclose(diffusion.numpy(), 0.01 * (348 / 0.01) ** t * np.sqrt(2 * np.log(348 / 0.01)),
                               rtol=1e-5)
    sigmas = np.exp(np.linspace(np.log(0.01), np.log(348), 1000))
    i = (t * 999).astype(int)
    _, g = sde.discretize(xt, tt)
    prev = np.where(i == 0, 0, sigmas[i - 1])
    np.testing.assert_allclose(g.numpy(), np.sqrt(sigmas[i] ** 2 - prev ** 2), rtol=1e-4)
    assert sde.prior_sampling(torch.randn(4000, 2, 4, 4)).std().item() == pytest.approx(348, rel=0.02)
    z = torch.randn(2, 2, 4, 4)
    n = 32
    np.testing.assert_allclose(sde.prior_logp(z).numpy(), -n / 2 * np.log(2 * np.pi * 348 ** 2)
                               - (z.numpy() ** 2).sum((1, 2, 3)) / (2 * 348 ** 2), rtol=1e-6)


def test_hfs_marginal_and_sde(data):
    x, t, xt, tt = data
    sde = _sde("hfssde")
    lf = sde.lowfreq_mask[0, 0].numpy().astype(np.float64)
    assert lf[:, 14:18].all() and lf.sum() == 32 * 4
    hp = _np_highpass(x, lf)
    mean, std = sde.marginal_prob(xt, tt)
    np.testing.assert_allclose(mean.numpy(), x + (np.exp(_c(t)) - 1)[:, None, None, None] * hp, atol=1e-5)
    np.testing.assert_allclose(std.numpy(), np.sqrt(1 - np.exp(2 * _c(t))), rtol=1e-5)
    drift, diffusion = sde.sde(xt, tt)
    beta = B0 + t * (B1 - B0)
    np.testing.assert_allclose(drift.numpy(), -0.5 * beta[:, None, None, None] * hp, atol=1e-4)
    np.testing.assert_allclose(diffusion.numpy(), np.sqrt(beta), rtol=1e-6)
    np.testing.assert_allclose(sde.high_pass(xt).numpy(), hp, atol=1e-5)


def test_hfs_low_frequencies_stay_exact(data):
    _, _, xt, tt = data
    sde = _sde("hfssde")
    mean, std = sde.marginal_prob(xt, tt)
    perturbed = mean + std[:, None, None, None] * sde.project(torch.randn_like(xt))
    lf = sde.lowfreq_mask
    diff = lf * (mri.fft2c(mri.r2c(perturbed)) - mri.fft2c(mri.r2c(xt)))
    assert diff.abs().max() < 1e-5
    prior = sde.prior_sampling(torch.randn_like(xt))
    assert (lf * mri.fft2c(mri.r2c(prior))).abs().max() < 1e-5


def test_hfs_mean_equal_option(data):
    x, t, xt, tt = data
    sde = _sde("hfssde", **{"training.mean_equal": "equal"})
    np.testing.assert_allclose(sde.mean_coeff(tt).numpy(), (1 + _c(t) / 1e6) ** 1e6, rtol=1e-5)
    with pytest.raises(ValueError, match="training.mean_equal"):
        _sde("hfssde", **{"training.mean_equal": "same"})


def test_hfs_prior_logp_on_high_frequency_subspace():
    sde = _sde("hfssde")
    z = sde.prior_sampling(torch.randn(2, 2, 32, 32))
    rank = 2 * (32 * 32 - 32 * 4)
    expected = -rank / 2 * math.log(2 * math.pi) - (z.double() ** 2).sum((1, 2, 3)) / 2
    np.testing.assert_allclose(sde.prior_logp(z).numpy(), expected.numpy(), rtol=1e-5)


def test_reverse_sde_and_ode():
    sde = _sde("vpsde")
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([0.3, 0.9])
    score = torch.randn_like(x)
    rev = sde.reverse(lambda x_, t_: score)
    f, g = sde.sde(x, t)
    drift, diffusion = rev.sde(x, t)
    assert torch.allclose(drift, f - g[:, None, None, None] ** 2 * score)
    assert torch.equal(diffusion, g)
    drift, diffusion = sde.reverse(lambda x_, t_: score, probability_flow=True).sde(x, t)
    assert torch.allclose(drift, f - 0.5 * g[:, None, None, None] ** 2 * score)
    assert not diffusion.any()


def test_unknown_sde_name():
    config = get_config()
    config.training.sde = "edm"
    with pytest.raises(ValueError, match="unknown training.sde 'edm'"):
        build.make_sde(config)
