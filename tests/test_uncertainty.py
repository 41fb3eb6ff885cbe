"""Error maps (issue 17): the conformal quantile, coverage, predicted PSNR and the pseudo-replica noise propagation,
against float64 references on tiny problems; then the calibration fit and its use in the reconstruction harness."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from conftest import np_fft2c

import sampling
import sde_lib
from runners import uncertainty
from utils import metrics
from utils.noise import kspace_noise, replica_variance


def test_conformal_quantile_is_the_rank_ceil_n_plus_1_level():
    scores = np.arange(1.0, 20.0)[::-1]  # 19 values, given out of order
    assert metrics.conformal_quantile(scores, 0.9) == 18.0  # ⌈20 · 0.9⌉ = 18
    assert metrics.conformal_quantile(scores, 0.5) == 10.0
    assert metrics.conformal_quantile(scores, 0.96) == float("inf")  # ⌈20 · 0.96⌉ = 20 > 19
    rng = np.random.default_rng(0)
    calibration, test = rng.standard_exponential(999), rng.standard_exponential(200_000)
    q = metrics.conformal_quantile(calibration, 0.9)
    assert np.mean(calibration <= q) >= 0.9 and abs(np.mean(test <= q) - 0.9) < 0.02


def test_coverage_of_gaussian_errors_matches_the_nominal_levels():
    assert metrics.gaussian_z(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert metrics.gaussian_z(0.68) == pytest.approx(0.994458, abs=1e-6)
    rng = np.random.default_rng(1)
    std = rng.uniform(0.5, 2.0, 100_000)
    error = std * rng.standard_normal(std.size)
    np.testing.assert_allclose(metrics.coverage(error, std), metrics.COVERAGE_LEVELS, atol=0.005)
    narrow = math.erf(metrics.gaussian_z(0.95) / 3 / math.sqrt(2))  # P(|N(0, 1)| ≤ 1.96 / 3)
    np.testing.assert_allclose(metrics.coverage(error, std / 3, (0.95,)), [narrow], atol=0.005)


def test_error_calibration_columns_and_rank_correlation():
    rng = np.random.default_rng(2)
    truth = np.ones((40, 40))
    std = rng.uniform(0.01, 0.1, truth.shape)
    recon = truth + std * rng.standard_normal(truth.shape)
    row = metrics.error_calibration(truth, recon, std, np.ones(truth.shape))
    assert set(row) == {"coverage_50", "coverage_68", "coverage_90", "coverage_95", "error_rank_corr",
                        "error_rank_ceiling"}
    assert abs(row["coverage_95"] - 0.95) < 0.03 and row["error_rank_corr"] > 0.4
    assert row["error_rank_corr"] == pytest.approx(row["error_rank_ceiling"], abs=0.08)  # the map is exact here
    flat = metrics.error_calibration(truth, recon, np.full(truth.shape, 0.1), np.ones(truth.shape))
    assert np.isnan(flat["error_rank_corr"]) and np.isnan(flat["error_rank_ceiling"])


def test_rank_ceiling_is_the_rank_correlation_of_an_exact_map():
    rng = np.random.default_rng(3)
    for low, high in ((0.9, 1.1), (0.5, 2.0), (0.01, 1.0)):
        std = rng.uniform(low, high, 5000)
        draws = [stats.spearmanr(std, np.abs(std * rng.standard_normal(std.size))).statistic for _ in range(40)]
        assert metrics.rank_ceiling(std) == pytest.approx(np.mean(draws), abs=0.02)
        assert metrics.rank_ceiling(std) == metrics.rank_ceiling(std)  # repeatable
    assert metrics.rank_ceiling(rng.uniform(0.9, 1.1, 5000)) < 0.15 < 0.5 < metrics.rank_ceiling(
        rng.uniform(0.01, 1.0, 5000))


def test_predicted_psnr_is_the_psnr_of_an_error_of_that_variance():
    variance = np.full((8, 9), 0.01)
    assert metrics.predicted_psnr(2.0, variance) == pytest.approx(10 * np.log10(4 / 0.01))
    error = np.sqrt(variance)  # an error of exactly that power
    assert metrics.predicted_psnr(2.0, variance) == pytest.approx(metrics.psnr(np.full((8, 9), 2.0), 2.0 - error))
    assert metrics.predicted_psnr(1.0, np.zeros((4, 4))) == float("inf")


# --- noise propagation: explicit float64 matrices on a 5×6 image with 2 coils -----------------------------------

H, W, C = 5, 6, 2


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    maps = rng.standard_normal((C, H, W)) + 1j * rng.standard_normal((C, H, W))
    maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=0))
    maps[:, 0, 0] = 0  # one pixel no coil sees
    mask = np.zeros((H, W))
    mask[:, [0, 2, 3]] = 1
    columns = []
    for p in range(H * W):
        basis = np.zeros(H * W, complex)
        basis[p] = 1
        columns.append((mask * np_fft2c(maps * basis.reshape(H, W))).ravel())
    a = np.stack(columns, axis=1)  # [C·H·W, H·W]: A x = M ⊙ F(S ⊙ x), every coil's samples stacked
    return {"A": a, "maps": torch.from_numpy(maps[None]).to(torch.complex64),
            "mask": torch.from_numpy(mask[None, None]).float()}


def tikhonov(a: np.ndarray, lamda: float) -> np.ndarray:
    """`(AᴴA + λI)⁻¹Aᴴ` in float64."""
    return np.linalg.solve(a.conj().T @ a + lamda * np.eye(a.shape[1]), a.conj().T)


def response_matrix(settings, problem, sde=None, sigma=0.0) -> np.ndarray:
    """`sampling.data_response` applied to every k-space basis vector at once (one batch): its matrix
    `[H·W, C·H·W]`."""
    n = C * H * W
    basis = torch.eye(n, dtype=torch.complex64).reshape(n, C, H, W)
    delta = sampling.data_response(settings, sde, basis, problem["maps"].expand(n, C, H, W), problem["mask"],
                                   torch.full((n,), sigma))
    return delta.reshape(n, H * W).numpy().T


def ddim_settings(**changes) -> sampling.DDIMSettings:
    values = dict(noise_aware=False, dc_scale=1.0, discrepancy=1.0, support_mask=False, final_dc="none",
                  dc_lambda=0.05, cg_iters=100, steps=1, eps=1e-3, eta=0.0, dc_iters=100)
    return sampling.DDIMSettings(**{**values, **changes})


def test_ddim_response_is_the_last_proximal_solve(problem):
    a = problem["A"]
    measured = np.abs(a).sum(axis=1) > 0  # rows of unmeasured samples are zero: noise there is masked away
    expected = tikhonov(a, 0.05)
    got = response_matrix(ddim_settings(), problem)
    np.testing.assert_allclose(got[:, measured], expected[:, measured], atol=2e-4)


def test_noise_aware_ddim_response_uses_the_last_time_lambda(problem):
    sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, num_scales=10)
    eps, zeta, sigma = 0.02, 2.0, 0.03
    level = float(sde.marginal_std(torch.tensor([eps]))[0] / sde.mean_scale(torch.tensor([eps]))[0])
    lamda = zeta * sigma ** 2 / level ** 2
    got = response_matrix(ddim_settings(noise_aware=True, dc_scale=zeta, eps=eps), problem, sde, sigma)
    np.testing.assert_allclose(got, tikhonov(problem["A"], lamda), atol=2e-4)


@pytest.mark.parametrize("final_dc", ["cg", "replace"])
def test_final_data_consistency_is_replayed_after_the_last_step(problem, final_dc):
    a, lamda = problem["A"], 0.1
    first = tikhonov(a, lamda)  # the last DDIM step (λ = dc_lambda)
    if final_dc == "cg":  # argmin ‖A x − ν‖² + λ‖x − δ‖² = (AᴴA + λ)⁻¹(Aᴴν + λ δ)
        expected = np.linalg.solve(a.conj().T @ a + lamda * np.eye(H * W), a.conj().T + lamda * first)
    else:  # δ + Aᴴ(ν − A δ)
        expected = first + a.conj().T @ (np.eye(a.shape[0]) - a @ first)
    got = response_matrix(ddim_settings(final_dc=final_dc, dc_lambda=lamda), problem)
    measured = np.abs(a).sum(axis=1) > 0
    np.testing.assert_allclose(got[:, measured], expected[:, measured], atol=5e-4)


def test_pc_without_final_dc_has_no_response(problem):
    settings = sampling.PCSettings(noise_aware=False, dc_scale=1.0, discrepancy=1.0, support_mask=False,
                                   final_dc="none", dc_lambda=0.01, cg_iters=5, steps=1, eps=1e-3,
                                   predictor="euler_maruyama", corrector="langevin", snr=0.16, n_steps_each=1,
                                   mse=1.0, corrector_mse=1.0, project_score=False, noise_removal=True, denoise=False)
    assert not response_matrix(settings, problem).any()


def test_pseudo_replica_variance_matches_the_closed_form(problem):
    a, sigma = problem["A"], 0.3
    r = tikhonov(a, 0.05)
    expected = sigma ** 2 / 2 * np.sum(np.abs(r) ** 2 * (np.abs(a).sum(axis=1) > 0), axis=1)  # σ²/2 diag(R M Rᴴ)
    batch = 400  # replicas spread over a batch of identical slices: 400 × 10 = 4000 in all
    matrix = torch.from_numpy(r).to(torch.complex64)
    response = lambda nu: (nu.reshape(batch, -1) @ matrix.T).reshape(batch, 1, H, W)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    normal = lambda shape: torch.randn(shape, generator=gen)  # noqa: E731
    var = replica_variance(response, (batch, C, H, W), torch.full((batch,), sigma), problem["mask"], 10, normal)
    np.testing.assert_allclose(var.mean(0).reshape(-1).numpy(), expected, rtol=0.08, atol=1e-7)
    noise = kspace_noise((batch, C, H, W), torch.full((batch,), sigma), problem["mask"], normal)
    measured = problem["mask"].expand(batch, C, H, W) > 0
    assert noise.abs().square()[measured].mean() == pytest.approx(sigma ** 2, rel=0.03)
    assert not noise[~measured].any()


# --- calibration fit and the harness ------------------------------------------------------------------------------

def synthetic_slices(rng, count, spread_scale, baseline_noise=None):
    """Validation-like slices whose error is Gaussian with `spread_scale` times the (uncalibrated) map."""
    slices = []
    for _ in range(count):
        truth = rng.uniform(0.5, 1.0, (24, 24))
        error_std = rng.uniform(0.01, 0.05, truth.shape)
        item = {"truth": truth, "error_std": error_std,
                "recon": np.abs(truth + spread_scale * error_std * rng.standard_normal(truth.shape))}
        if baseline_noise is not None:
            item["baseline"] = np.abs(truth + baseline_noise * rng.standard_normal(truth.shape))
        slices.append(item)
    return slices


def test_fit_scales_the_map_to_the_nominal_coverage_and_predicts_the_mse():
    everywhere = lambda truth: np.ones(truth.shape, bool)  # noqa: E731
    slices = synthetic_slices(np.random.default_rng(4), 4, 3.0, baseline_noise=0.2)
    calibration = uncertainty.fit(slices, everywhere)
    assert calibration.scale == pytest.approx(3.0, rel=0.05)
    assert calibration.mse_scale == pytest.approx(1.0, rel=0.1)
    fresh = synthetic_slices(np.random.default_rng(5), 4, 3.0, baseline_noise=0.2)
    scaled = [{**s, "error_std": calibration.scale * s["error_std"]} for s in fresh]
    diagram = uncertainty.reliability(scaled, everywhere)
    np.testing.assert_allclose(diagram["observed"], diagram["nominal"], atol=0.03)
    # The baseline's error is independent of the reconstruction's here: E D = MSE_b + MSE, so r·(D + P) ≈ MSE_b
    # needs r ≈ MSE_b / (MSE_b + 2 MSE).
    mse = np.mean([np.mean((s["recon"] - s["truth"]) ** 2) for s in slices])
    mse_b = np.mean([np.mean((s["baseline"] - s["truth"]) ** 2) for s in slices])
    assert calibration.baseline_ratio == pytest.approx(mse_b / (mse_b + 2 * mse), rel=0.1)
    with pytest.raises(ValueError, match="no validation slice has an error map"):
        uncertainty.fit([], everywhere)


def test_slice_columns_predict_psnr_and_warn():
    rng = np.random.default_rng(6)
    truth = np.pad(rng.uniform(0.5, 1.0, (20, 20)), 6)
    std = np.full(truth.shape, 0.02)
    maps = {"sigma": np.array([0.1]), "misfit": np.array([3.0]), "var_noise": np.full((1,) + truth.shape, 0.0003),
            "baseline": (truth + 0.01)[None]}
    opts = uncertainty.Options(noise_replicas=2, error_smoothing=1.0, warn_misfit=2.0, warn_spread=0.0,
                               warn_baseline="sense", calibration="")
    recon = truth + 0.03
    region = lambda image: image > 0.1  # noqa: E731
    row, error_std = uncertainty.slice_columns(recon, truth, region, std, maps, 0, 4, opts,
                                               uncertainty.Calibration(2.0, 0.5, 0.5))
    variance = 1.25 * 0.02 ** 2 + 0.0003  # (1 + 1/K) s² + var_noise
    np.testing.assert_allclose(error_std, 2.0 * np.sqrt(variance))
    assert row["pred_psnr"] == pytest.approx(10 * np.log10(recon.max() ** 2 / (0.5 * 4.0 * variance)))
    assert row["spread_ratio"] == pytest.approx(0.02 / np.sqrt(0.0003))
    assert row["coverage_50"] == 1.0 and np.isnan(row["error_rank_corr"])  # |e| = 0.03 < 0.674 · 2 · 0.0255
    assert row["baseline_psnr"] == pytest.approx(metrics.psnr(truth, truth + 0.01))
    predicted = 0.5 * 4.0 * variance
    assert row["pred_margin"] == pytest.approx(10 * np.log10(0.5 * (0.02 ** 2 + predicted) / predicted))
    assert row["pred_margin"] < 0 and row["warn"] == 1  # misfit 3 > 2, and the baseline is predicted better
    assert len(uncertainty.warnings(row, opts, calibrated=True)) == 2
    quiet = uncertainty.Options(noise_replicas=2, error_smoothing=0.0, warn_misfit=0.0, warn_spread=0.0,
                                warn_baseline="", calibration="")
    row, _ = uncertainty.slice_columns(recon, truth, region, None, {"sigma": maps["sigma"], "misfit": maps["misfit"]},
                                       0, 1, quiet, None)
    assert row == {"sigma": 0.1, "misfit": 3.0, "warn": 0}


def test_fine_detail_is_the_spectral_energy_beyond_an_eighth_of_the_size():
    columns = np.arange(64)[None, :] * np.ones((64, 1))
    for frequency, share in ((20, 1 / 3), (4, 0.0)):  # 1 + cos: DC power 1, the two cosine bins ¼ each
        image = 1.0 + np.cos(2 * np.pi * frequency * columns / 64)
        assert uncertainty.fine_detail(image) == pytest.approx(share, abs=1e-12)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((48, 40))
    power = np.abs(np.fft.fftshift(np.fft.fft2(noise))) ** 2
    k = np.hypot(*np.meshgrid(np.arange(48) - 24, np.arange(40) - 20, indexing="ij"))
    assert uncertainty.fine_detail(noise) == pytest.approx(power[k > 5].sum() / power.sum())  # min(48, 40) / 8
    assert uncertainty.fine_detail(np.full((16, 16), 3.0)) == 0.0 and uncertainty.fine_detail(np.zeros((8, 8))) == 0.0
    assert uncertainty.detail_factor(0.2, 0.05, 0.2) == pytest.approx(4 ** 0.2)
    for detail, reference, power in ((0.2, 0.0, 0.2), (0.2, 0.05, 0.0), (0.0, 0.05, 0.2)):
        assert uncertainty.detail_factor(detail, reference, power) == 1.0


def test_the_calibrated_map_follows_the_slice_detail_against_the_validation_slices():
    rng = np.random.default_rng(8)
    everywhere = lambda truth: np.ones(truth.shape, bool)  # noqa: E731
    slices = synthetic_slices(rng, 2, 2.0, baseline_noise=0.1)
    slices[1]["recon"] = slices[1]["recon"] + 0.3 * np.cos(np.pi * np.arange(24))[None, :]  # finer than slice 0
    details = [uncertainty.fine_detail(s["recon"]) for s in slices]
    calibration = uncertainty.fit(slices, everywhere, detail_power=0.2)
    assert details[1] > 4 * details[0] and calibration.detail == pytest.approx(math.sqrt(details[0] * details[1]))
    plain = uncertainty.calibrated(slices, calibration, "spread")
    adjusted = uncertainty.calibrated(slices, calibration, "spread", detail_power=0.2)
    for s, p, a, d in zip(slices, plain, adjusted, details):
        np.testing.assert_allclose(a["error_std"], p["error_std"] * (d / calibration.detail) ** 0.1)
    assert uncertainty.fit(slices, everywhere).detail == 0.0  # detail_power 0: no reference, no adjustment
    # at test time: the map's variance, the predicted MSE and PSNR follow (detail / d_ref)^p; uncalibrated, nothing
    s = slices[1]
    maps = {"sigma": np.array([0.1]), "misfit": np.array([1.0]), "var_noise": (s["error_std"] ** 2)[None]}
    opts = uncertainty.Options(noise_replicas=2, error_smoothing=0.0, warn_misfit=0.0, warn_spread=0.0,
                               warn_baseline="", calibration="", detail_power=0.2)
    row, error_std = uncertainty.slice_columns(s["recon"], s["truth"], everywhere, None, maps, 0, 1, opts,
                                               calibration)
    factor = (details[1] / calibration.detail) ** 0.2
    np.testing.assert_allclose(error_std, calibration.scale * s["error_std"] * math.sqrt(factor))
    assert row["detail"] == pytest.approx(details[1])
    off = uncertainty.Options(**{**opts.__dict__, "detail_power": 0.0})
    row_off, _ = uncertainty.slice_columns(s["recon"], s["truth"], everywhere, None, maps, 0, 1, off, calibration)
    assert row_off["pred_psnr"] - row["pred_psnr"] == pytest.approx(10 * math.log10(factor))
    _, raw = uncertainty.slice_columns(s["recon"], s["truth"], everywhere, None, maps, 0, 1, opts, None)
    np.testing.assert_allclose(raw, s["error_std"])
    with pytest.raises(ValueError, match=r"sampling.detail_power=-0.2 is not allowed: a finite number ≥ 0"):
        uncertainty.Options(**{**opts.__dict__, "detail_power": -0.2})


def test_error_variance_adds_both_parts_and_pools_neighbours():
    std, noise = np.zeros((9, 9)), np.zeros((9, 9))
    std[4, 4], noise[0, 0] = 2.0, 1.0
    exact = uncertainty.error_variance(std, noise, 4, 0.0)
    assert exact[4, 4] == 1.25 * 4.0 and exact[0, 0] == 1.0 and exact.sum() == 6.0
    pooled = uncertainty.error_variance(std, noise, 4, 1.0)
    assert pooled.sum() == pytest.approx(6.0) and pooled[4, 4] < 5.0 and pooled[4, 5] > 0
    assert uncertainty.error_variance(None, None, 1, 1.0) is None


def test_default_options_leave_the_identity_unchanged():
    from configs.default_fastMRI_configs import get_default_configs

    config = get_default_configs()
    opts = uncertainty.options(config)
    assert uncertainty.identity_fields(opts, None) is None and (opts.cv_level, opts.detail_power) == ("geomean", 0.3)
    config.sampling.noise_replicas = 3
    assert uncertainty.identity_fields(uncertainty.options(config), None)["noise_replicas"] == 3
    config.sampling.warn_baseline = "vp"
    with pytest.raises(ValueError, match="sampling.warn_baseline='vp' is not allowed: one of the classical"):
        uncertainty.options(config)


@pytest.fixture
def harness(make_fastmri, tmp_path):
    from configs.tiny import get_config

    test = make_fastmri("knee_test", files=1, slices=2, coils=4, shape=(32, 32), seed=1)
    val = make_fastmri("knee_val", files=1, slices=2, coils=4, shape=(32, 32), seed=2)
    config = get_config()
    config.data.test_roots.knee, config.data.eval_root = test.root, val.root
    config.sampling.datashift, config.sampling.method, config.sampling.cg_iters = "knee", "sense", 5
    config.sampling.noise_replicas, config.sampling.warn_baseline = 2, "zero_filled"
    config.training.skip_slices = 0
    return config, str(tmp_path)


def test_calibrate_then_reconstruct_with_the_calibration(harness, tmp_path):
    import os

    import scipy.io

    from runners.calibrate import calibrate
    from runners.reconstruct import reconstruct

    config, workdir = harness
    report = calibrate(config, workdir, 2)
    folder = os.path.dirname(report["path"])
    assert folder.startswith(os.path.join(workdir, "calibrate")) and report["slices"] == 2
    assert dict(zip(report["after"]["nominal"], report["after"]["observed"]))[0.95] >= 0.95  # conformal, in sample
    assert os.path.getsize(os.path.join(folder, "reliability.png")) > 1000
    config.sampling.calibration = report["path"]
    config.sampling.output_dir = str(tmp_path / "test")
    summary = reconstruct(config, workdir)
    assert summary["calibrated"] and summary["reliability"]["nominal"][0] == 0.1
    for key in ("coverage_50", "coverage_68", "coverage_90", "coverage_95", "error_rank_corr", "pred_psnr",
                "pred_margin", "baseline_psnr", "misfit", "sigma", "n_warned", "warning"):
        assert key in summary
    mat = scipy.io.loadmat(tmp_path / "test" / "recon_file1000_0.mat")
    assert {"error_std", "noise_std", "baseline"} <= set(mat)
    setting = json.load(open(tmp_path / "test" / "setting.json"))
    assert setting["fields"]["uncertainty"]["calibration"]["scale"] == report["calibration"].scale
    config.sampling.acc, config.sampling.output_dir = 2, str(tmp_path / "other")
    with pytest.raises(ValueError, match=r"was fitted for another setting \(differs in mask"):
        reconstruct(config, workdir)


@pytest.mark.parametrize("cv_level", ["geomean", "max"])
def test_calibrated_cross_validated_maps_combine_the_two_levels(harness, tmp_path, cv_level):
    """The levels on one scale end to end: the calibration's ρ is the validation rows' geometric mean of
    spread_level / cv_error, d_ref their geometric mean of `detail`, and each test map's mean square is
    k²·√(spread_level·ρ·cv_error)·(detail / d_ref)^p ('geomean'; max(spread_level, ρ·cv_error) for 'max') of its
    row, p the default `detail_power`."""
    import os

    import scipy.io

    from runners.calibrate import calibrate
    from runners.outputs import read_rows
    from runners.reconstruct import reconstruct

    config, workdir = harness
    config.sampling.cross_validate, config.sampling.cv_level = True, cv_level
    report = calibrate(config, workdir, 2)
    validation = read_rows(os.path.join(os.path.dirname(report["path"]), "metrics.csv"))
    ratios = [r["spread_level"] / r["cv_error"] for r in validation]
    calibration = report["calibration"]
    assert calibration.cv_ratio == pytest.approx(np.exp(np.mean(np.log(ratios))))
    assert calibration.detail == pytest.approx(np.exp(np.mean(np.log([r["detail"] for r in validation]))))
    config.sampling.calibration, config.sampling.output_dir = report["path"], str(tmp_path / "test")
    reconstruct(config, workdir)
    rows = read_rows(str(tmp_path / "test" / "metrics.csv"))
    assert len(rows) == 2
    for row in rows:
        error_std = scipy.io.loadmat(tmp_path / "test" / f"recon_{row['fname']}_{row['slice']}.mat")["error_std"]
        spread, cv = row["spread_level"], calibration.cv_ratio * row["cv_error"]
        level = np.sqrt(spread * cv) if cv_level == "geomean" else max(spread, cv)
        level *= (row["detail"] / calibration.detail) ** config.sampling.detail_power
        assert np.mean(error_std.astype(np.float64) ** 2) == pytest.approx(calibration.scale ** 2 * level, rel=1e-5)


@pytest.mark.parametrize("text, message", [
    ('{"calibration": {"scale": 1.2, "mse_scale"', "not a readable calibration.json"),  # cut off mid-write
    ('{"calibration": {"scale": 1.2, "cv_ratio": NaN}, "key": {}}', r"cv_ratio=nan.*finite number > 0"),
    ('{"calibration": {"scale": -1.0}, "key": {}}', r"scale=-1.0.*finite number > 0"),
    ('{"calibration": {"scale": 1.2, "detail": -0.1}, "key": {}}', r"detail=-0.1.*detail ≥ 0"),
    ('{"calibration": {"scale": 1.2, "spread": 2}, "key": {}}', "not a readable calibration.json"),
    ('[1, 2]', "not a readable calibration.json"),
])
def test_a_damaged_calibration_file_is_refused_by_name(tmp_path, text, message):
    from runners.identity import Identity

    opts = uncertainty.Options(noise_replicas=0, error_smoothing=2.0, warn_misfit=0.0, warn_spread=0.0,
                               warn_baseline="", calibration="")
    path = tmp_path / "calibration.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        uncertainty.load_calibration(str(path), Identity("x", {}), opts)
    assert str(path) in str(err.value)
    key = json.dumps(uncertainty.calibration_key({}, opts))
    path.write_text(f'{{"calibration": {{"scale": 1.2, "cv_ratio": 0.5}}, "key": {key}}}')
    assert uncertainty.load_calibration(str(path), Identity("x", {}), opts) == uncertainty.Calibration(1.2,
                                                                                                       cv_ratio=0.5)


def test_a_calibration_keeps_the_options_that_the_identity_leaves_out_at_their_defaults(tmp_path):
    """With every error-map option at its default a run's identity has no `uncertainty` field, but a calibration's
    key keeps them all: one fitted under another default (here the detail power before 2026-12-01) is refused."""
    from runners.identity import Identity

    opts = uncertainty.Options(noise_replicas=0, error_smoothing=2.0, warn_misfit=0.0, warn_spread=0.0,
                               warn_baseline="", calibration="")
    assert uncertainty.identity_fields(opts, None) is None
    identity = Identity("x", {"method": "hfssde"})
    key = uncertainty.calibration_key(identity.fields, opts)
    assert (key["method"], key["uncertainty.cv_level"], key["uncertainty.detail_power"]) == ("hfssde", "geomean", 0.3)
    path = str(tmp_path / "calibration.json")
    older = dataclasses.replace(opts, detail_power=0.2)
    uncertainty.write_calibration(path, uncertainty.Calibration(1.2, detail=0.03), {"identity": "x", "fields":
                                                                                    identity.fields}, older, {})
    assert uncertainty.load_calibration(path, identity, older).detail == 0.03
    with pytest.raises(ValueError, match=r"was fitted for another setting \(differs in uncertainty.detail_power\)"):
        uncertainty.load_calibration(path, identity, opts)
