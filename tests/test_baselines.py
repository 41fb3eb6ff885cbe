"""Classical baselines on a small simulated multi-coil problem (Shepp-Logan phantom, birdcage coils)."""
import numpy as np
import pytest
import sigpy
import sigpy.mri
import torch

from configs.default_fastMRI_configs import get_default_configs
from utils import metrics
from baselines import BASELINES
from runners import build
from utils.mri import conjugate_gradient
from utils.mri import sense_adjoint, sense_forward

NUM_COILS = 8


def _phantom(h, w):
    """Piecewise-constant complex image `[1, 1, H, W]` (Shepp-Logan with a smooth phase)."""
    phase = np.exp(1j * np.linspace(0, np.pi / 3, w))[None, :]
    return torch.from_numpy((sigpy.shepp_logan((h, w)) * phase).astype(np.complex64))[None, None]


def _maps(h, w):
    """Birdcage sensitivities `[1, C, H, W]` times a smooth receive bias, so that Σ|S|² is not constant."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    bias = 0.5 + 0.5 * np.exp(-((yy - 0.3) ** 2 + (xx + 0.2) ** 2))
    return torch.from_numpy((sigpy.mri.birdcage_maps((NUM_COILS, h, w)) * bias).astype(np.complex64))[None]


def _uniform_mask(h, w, acc=4, acs=16):
    """1-D mask `[1, 1, H, W]`: the `acs` centre columns plus every `acc`-th remaining column from the first."""
    centre = set(range((w - acs) // 2, (w + acs) // 2))
    outer = [c for c in range(w) if c not in centre][::acc]
    mask = torch.zeros(1, 1, h, w)
    mask[..., sorted(centre | set(outer))] = 1
    return mask


def _config(**sampling):
    return sampling


def run(name, y, csm, mask, sampling):
    """Baseline `name` with the settings the runners resolve from the default config updated by `sampling`."""
    config = get_default_configs()
    config.sampling.update(sampling, method=name)
    return BASELINES.get(name)(y, csm, mask, build.method_settings(config))


def _psnr(x, ref):
    return metrics.psnr(metrics.to_magnitude(ref[0, 0]), metrics.to_magnitude(x[0, 0]))


@pytest.fixture(scope="module")
def problem():
    x, csm, mask = _phantom(64, 64), _maps(64, 64), _uniform_mask(64, 64)
    return x, csm, mask, sense_forward(x, csm, mask)


def test_registry_lists_the_methods_and_names_them_on_error():
    assert BASELINES.names() == ["l1wavelet", "sense", "zero_filled"]
    with pytest.raises(ValueError, match=r"unknown baseline method 'grappa'.*'l1wavelet', 'sense', 'zero_filled'"):
        BASELINES.get("grappa")


def test_zero_filled_is_the_adjoint(problem):
    x, csm, mask, y = problem
    out = run("zero_filled", y, csm, mask, _config())
    assert out.shape == x.shape and out.dtype == torch.complex64
    torch.testing.assert_close(out, sense_adjoint(y, csm, mask))


@pytest.mark.parametrize("shape", [(64, 64), (45, 38)])
def test_cg_sense_recovers_the_image_from_full_noiseless_data(shape):
    x, csm, full = _phantom(*shape), _maps(*shape), torch.ones(1, 1, *shape)
    out = run("sense", sense_forward(x, csm, full), csm, full, _config(cg_iters=30))
    assert out.shape == x.shape and out.dtype == torch.complex64
    assert (torch.linalg.norm(out - x) / torch.linalg.norm(x)).item() < 1e-4


def test_cg_sense_beats_zero_filled_at_4x(problem):
    x, csm, mask, y = problem
    config = _config(cg_iters=30)
    psnr_zf = _psnr(run("zero_filled", y, csm, mask, config), x)
    psnr_sense = _psnr(run("sense", y, csm, mask, config), x)
    assert psnr_sense > psnr_zf + 5


def test_cg_residuals_decrease(problem):
    _, csm, mask, y = problem
    rhs = sense_adjoint(y, csm, mask)

    def normal_op(v):
        return sense_adjoint(sense_forward(v, csm, mask), csm, mask)

    # CG on the normal equations minimises ‖A x − y‖ over growing Krylov spaces: monotone in k.
    data_residuals = [torch.linalg.norm(sense_forward(conjugate_gradient(normal_op, rhs, k), csm, mask) - y).item()
                      for k in range(13)]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(data_residuals, data_residuals[1:]))
    assert data_residuals[-1] < 0.1 * data_residuals[0]
    normal_residual = torch.linalg.norm(normal_op(conjugate_gradient(normal_op, rhs, 30)) - rhs)
    assert normal_residual.item() < 1e-2 * torch.linalg.norm(rhs).item()


def test_conjugate_gradient_solves_small_spd_systems_per_sample():
    rng = np.random.default_rng(0)
    n = 6
    factors = rng.standard_normal((3, n, n))
    matrices = factors @ factors.transpose(0, 2, 1) + 0.5 * np.eye(n)  # a different SPD matrix per sample
    rhs = rng.standard_normal((3, n))
    a = torch.from_numpy(matrices)
    x = conjugate_gradient(lambda v: torch.einsum("bij,bj->bi", a, v), torch.from_numpy(rhs), n)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(matrices, rhs[..., None])[..., 0], rtol=1e-8, atol=1e-10)


def test_batched_cg_sense_equals_per_sample_runs(problem):
    x, csm, mask, _ = problem
    images = torch.cat([x, 0.5 * x.flip(-1), torch.zeros_like(x)])  # the last sample has no signal at all
    maps = torch.cat([csm, csm.roll(2, dims=1), csm.roll(5, dims=1)])
    y = sense_forward(images, maps, mask)
    config = _config(cg_iters=20)
    batched = run("sense", y, maps, mask, config)
    assert torch.isfinite(torch.view_as_real(batched)).all()
    assert torch.count_nonzero(batched[2]) == 0
    for b in range(2):
        single = run("sense", y[b:b + 1], maps[b:b + 1], mask, config)
        assert (torch.linalg.norm(batched[b:b + 1] - single) / torch.linalg.norm(single)).item() < 1e-5


def test_l1wavelet_shape_and_quality(problem):
    x, csm, mask, y = problem
    config = _config(l1_lambda=1e-3, l1_iters=60)
    out = run("l1wavelet", y.repeat(2, 1, 1, 1), csm.repeat(2, 1, 1, 1), mask, config)
    assert out.shape == (2, 1, 64, 64) and out.dtype == torch.complex64 and out.device == y.device
    torch.testing.assert_close(out[0], out[1])
    psnr_zf = _psnr(run("zero_filled", y, csm, mask, config), x)
    assert _psnr(out[:1], x) > psnr_zf + 5


def test_bad_inputs_raise_clear_errors(problem):
    _, csm, mask, y = problem
    for name in BASELINES.names():
        with pytest.raises(ValueError, match=r"sampling mask of shape \(1, 1, 64, 32\)"):
            run(name, y, csm, mask[..., :32], _config())
        with pytest.raises(ValueError, match="y and csm"):
            run(name, y, csm[:, :4], mask, _config())
    with pytest.raises(ValueError, match="sampling.cg_iters"):
        run("sense", y, csm, mask, _config(cg_iters=0))
