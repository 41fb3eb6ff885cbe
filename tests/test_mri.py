"""MRI operators against float64 numpy, adjoint identities, projector properties."""
import numpy as np
import pytest
import torch

from tests.conftest import np_fft2c, np_ifft2c
from utils import mri

SHAPES = [(6, 8), (7, 9), (16, 16), (5, 12)]


def _crandn(rng, *shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))


@pytest.mark.parametrize("shape", SHAPES)
def test_fft2c_matches_numpy_and_is_unitary(shape):
    rng = np.random.default_rng(0)
    x = _crandn(rng, 2, 3, *shape)
    k = mri.fft2c(torch.from_numpy(x.astype(np.complex64)))
    assert k.dtype == torch.complex64
    np.testing.assert_allclose(k.numpy(), np_fft2c(x), atol=1e-5)
    back = mri.ifft2c(k)
    np.testing.assert_allclose(back.numpy(), x, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(k.numpy()), np.linalg.norm(x), rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_dc_is_at_the_centre(shape):
    x = torch.ones(shape, dtype=torch.complex64)
    k = mri.fft2c(x)
    h, w = shape
    assert abs(k[h // 2, w // 2].item() - np.sqrt(h * w)) < 1e-4
    assert k.abs().sum().item() == pytest.approx(np.sqrt(h * w), rel=1e-4)


def test_c2r_r2c_roundtrip():
    x = torch.randn(2, 1, 5, 6, dtype=torch.complex64)
    r = mri.c2r(x)
    assert r.shape == (2, 2, 5, 6) and r.dtype == torch.float32
    assert torch.equal(r[:, 0], x.real[:, 0]) and torch.equal(r[:, 1], x.imag[:, 0])
    assert torch.equal(mri.r2c(r), x)
    with pytest.raises(ValueError, match="even number of channels"):
        mri.r2c(torch.zeros(1, 3, 4, 4))


def _problem(shape, coils=4, seed=0):
    rng = np.random.default_rng(seed)
    x = _crandn(rng, 2, 1, *shape)
    csm = _crandn(rng, 2, coils, *shape)
    mask = (rng.random(shape[-1]) < 0.5).astype(np.float32)[None, :].repeat(shape[0], 0)
    y = _crandn(rng, 2, coils, *shape)
    return x, csm, mask, y


@pytest.mark.parametrize("shape", SHAPES)
def test_sense_forward_and_adjoint_match_numpy(shape):
    x, csm, mask, y = _problem(shape)
    t = lambda a: torch.from_numpy(a.astype(np.complex64))  # noqa: E731
    m = torch.from_numpy(mask)
    ax = mri.sense_forward(t(x), t(csm), m)
    np.testing.assert_allclose(ax.numpy(), mask * np_fft2c(csm * x), atol=1e-4)
    ahy = mri.sense_adjoint(t(y), t(csm), m)
    assert ahy.shape == (2, 1) + shape
    np.testing.assert_allclose(ahy.numpy(), np.sum(np.conj(csm) * np_ifft2c(mask * y), 1, keepdims=True), atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_sense_adjoint_identity(shape):
    x, csm, mask, y = _problem(shape, seed=1)
    t = lambda a: torch.from_numpy(a.astype(np.complex64)).to(torch.complex128)  # noqa: E731
    m = torch.from_numpy(mask).double()
    lhs = torch.vdot(mri.sense_forward(t(x), t(csm), m).flatten(), t(y).flatten())
    rhs = torch.vdot(t(x).flatten(), mri.sense_adjoint(t(y), t(csm), m).flatten())
    assert abs(lhs - rhs) < 1e-9 * abs(lhs)


def test_kspace_filter_is_an_orthogonal_projector():
    torch.manual_seed(0)
    lf = torch.zeros(1, 1, 9, 10)
    lf[..., 3:6] = 1
    hp = 1 - lf
    x, z = torch.randn(2, 2, 9, 10, dtype=torch.float64), torch.randn(2, 2, 9, 10, dtype=torch.float64)
    px = mri.kspace_filter(x, hp)
    assert torch.allclose(mri.kspace_filter(px, hp), px, atol=1e-12)
    assert torch.allclose((px * z).sum(), (x * mri.kspace_filter(z, hp)).sum(), atol=1e-10)
    assert torch.allclose(px + mri.kspace_filter(x, lf), x, atol=1e-12)
    low = mri.fft2c(mri.r2c(px)) * lf
    assert low.abs().max() < 1e-12


def test_rss_and_center_crop():
    x = torch.randn(1, 3, 8, 6, dtype=torch.complex64)
    np.testing.assert_allclose(mri.rss(x).numpy()[:, 0], np.sqrt((np.abs(x.numpy()) ** 2).sum(1)), rtol=1e-6)
    a = np.arange(7 * 9).reshape(7, 9)
    np.testing.assert_array_equal(mri.center_crop(torch.from_numpy(a), (4, 4)).numpy(), a[1:5, 2:6])
    with pytest.raises(ValueError, match="larger than the image"):
        mri.center_crop(torch.from_numpy(a), (8, 4))


@pytest.mark.parametrize("shape", SHAPES)
def test_sense_normal_equals_adjoint_of_forward(shape):
    x, csm, mask, _ = _problem(shape, seed=2)
    t = lambda a: torch.from_numpy(a.astype(np.complex64)).to(torch.complex128)  # noqa: E731
    m = torch.from_numpy(mask).double()
    expected = mri.sense_adjoint(mri.sense_forward(t(x), t(csm), m), t(csm), m)
    assert torch.allclose(mri.sense_normal(t(x), t(csm), m), expected, atol=1e-10)
    assert torch.allclose(mri.sense_normal(t(x), t(csm), m[None, None]), expected, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_kspace_filter_matches_numpy(shape):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2) + shape)
    mask = (rng.random(shape) < 0.4).astype(np.float64)
    k = np_fft2c(x[:, 0] + 1j * x[:, 1])
    expected = np_ifft2c(mask * k)
    got = mri.kspace_filter(torch.from_numpy(x), torch.from_numpy(mask))
    np.testing.assert_allclose(got.numpy(), np.stack([expected.real, expected.imag], 1), atol=1e-12)
