"""k-space cross-validation (sampling.cross_validate): the held-out split of a sampling mask."""
import dataclasses

import numpy as np
import pytest
import torch

from runners import uncertainty
from utils.masks import holdout_split, make_mask


def test_uniform_mask_with_every_second_line_held_splits_into_the_mask_of_twice_the_acceleration():
    mask = torch.from_numpy(make_mask("uniform", 128, acc=8, acs=24))[None, None]
    kept, held = holdout_split(mask, every=2)
    np.testing.assert_array_equal(kept[0, 0].numpy(), make_mask("uniform", 128, acc=16, acs=24))
    assert torch.equal(kept + held, mask) and not (kept * held).any()
    assert torch.nonzero(held[0, 0, 0]).flatten().tolist() == [8, 24, 40, 80, 96, 112]


def test_by_default_every_fourth_outer_line_is_held_out():
    mask = torch.from_numpy(make_mask("uniform", 128, acc=4, acs=24))
    kept, held = holdout_split(mask)
    centre = range(52, 77)  # the 24 centre columns and the uniform line at 76 next to them
    outside = [c for c in torch.nonzero(mask[0]).flatten().tolist() if c not in centre]
    assert outside == [*range(0, 52, 4), *range(80, 128, 4)]
    assert torch.nonzero(held[0]).flatten().tolist() == outside[3::4] == [12, 28, 44, 88, 104, 120]
    assert torch.equal(kept + held, mask) and kept[:, 52:77].all()


@pytest.mark.parametrize("kind, every", [("cartesian", 2), ("random_uniform", 3)])
def test_random_masks_keep_their_centre_and_hold_every_nth_line(kind, every):
    mask = torch.from_numpy(make_mask(kind, 64, acc=4, acs=8, seed=3))
    kept, held = holdout_split(mask, every)
    lines = torch.nonzero(mask[0] > 0).flatten().tolist()
    left, right = 28, 35  # the 8 centre columns, grown by random lines next to them
    while left - 1 in lines:
        left -= 1
    while right + 1 in lines:
        right += 1
    assert kept[:, left:right + 1].all() and not held[:, left:right + 1].any()
    outside = [c for c in lines if not left <= c <= right]
    assert torch.nonzero(held[0]).flatten().tolist() == outside[every - 1::every]
    assert torch.equal(kept + held, mask)


def test_two_dimensional_mask_is_split_by_columns():
    rng = np.random.default_rng(0)
    mask = torch.from_numpy((rng.random((32, 32)) < 0.3).astype(np.float32))
    mask[:, 14:18] = 0  # no centre block: every measured column takes part
    kept, held = holdout_split(mask)
    assert torch.equal(kept + held, mask) and held.any() and kept.any()
    held_columns = held.any(dim=0)
    assert not (kept[:, held_columns]).any()  # a held-out column is held out whole


@pytest.mark.parametrize("kind", ["low_frequency", "center"])
def test_a_mask_without_lines_outside_the_centre_cannot_be_cross_validated(kind):
    with pytest.raises(ValueError, match=r"sampling.cv_every=4-th .* which has 0 such lines: lower"):
        holdout_split(torch.from_numpy(make_mask(kind, 32, acs=8)))


def test_a_mask_with_fewer_outer_lines_than_cv_every_is_refused_by_name():
    mask = torch.from_numpy(make_mask("uniform", 32, acc=8, acs=8))  # 3 lines outside the centre
    assert len(torch.nonzero(holdout_split(mask, 3)[1][0])) == 1
    with pytest.raises(ValueError, match=r"sampling.cv_every=4-th .* which has 3 such lines"):
        holdout_split(mask, 4)


@pytest.mark.parametrize("value", [1, 0, 2.5, True])
def test_cv_every_must_be_a_whole_number_of_at_least_two(value):
    with pytest.raises(ValueError, match="sampling.cv_every"):
        uncertainty.Options(noise_replicas=0, error_smoothing=0.0, warn_misfit=0.0, warn_spread=0.0,
                            warn_baseline="", calibration="", cross_validate=True, cv_every=value)


def test_folds_hold_out_disjoint_lines_spread_between_one_another():
    mask = torch.from_numpy(make_mask("uniform", 128, acc=4, acs=24))
    outside = [*range(0, 52, 4), *range(80, 128, 4)]
    held = [torch.nonzero(holdout_split(mask, 4, fold, 2)[1][0]).flatten().tolist() for fold in range(2)]
    assert held == [outside[3::4], outside[1::4]]
    assert torch.equal(holdout_split(mask, 4, 0, 2)[1], holdout_split(mask)[1])  # fold 0 is the one-fold split
    held = [holdout_split(mask, 2, fold, 2)[1] for fold in range(2)]  # every 2nd line, two folds: all outer lines
    assert torch.nonzero(sum(held)[0]).flatten().tolist() == outside and not (held[0] * held[1]).any()
    held = [torch.nonzero(holdout_split(mask, 4, fold, 3)[1][0]).flatten().tolist() for fold in range(3)]
    assert held == [outside[3::4], outside[2::4], outside[1::4]]


@pytest.mark.parametrize("value", [0, 5, 1.5, True])
def test_cv_folds_must_be_a_whole_number_up_to_cv_every(value):
    with pytest.raises(ValueError, match=r"sampling.cv_folds.*from 1 to sampling.cv_every=4"):
        uncertainty.Options(noise_replicas=0, error_smoothing=0.0, warn_misfit=0.0, warn_spread=0.0,
                            warn_baseline="", calibration="", cross_validate=True, cv_folds=value)


@pytest.mark.parametrize("value", [True, False, "both", ""])
def test_cv_level_must_be_one_of_the_four_levels(value):
    with pytest.raises(ValueError, match=r"sampling.cv_level=.* one of \['geomean', 'max', 'cv', 'spread'\].*True was"):
        uncertainty.Options(noise_replicas=0, error_smoothing=0.0, warn_misfit=0.0, warn_spread=0.0,
                            warn_baseline="", calibration="", cross_validate=True, cv_level=value)


def test_slice_columns_set_the_map_to_the_cross_validation_level():
    rng = np.random.default_rng(7)
    truth = np.pad(rng.uniform(0.5, 1.0, (12, 12)), 4)
    recon, std = truth + 0.05, rng.uniform(0.01, 0.03, truth.shape)
    opts = uncertainty.Options(noise_replicas=0, error_smoothing=0.0, warn_misfit=0.0, warn_spread=0.0,
                               warn_baseline="", calibration="", cross_validate=True)
    maps = {"sigma": np.array([0.1]), "misfit": np.array([1.0]), "cv_error": np.array([0.004])}
    region = lambda image: image > 0.1  # noqa: E731
    spread = 1.25 * std ** 2  # (1 + 1/K)·s², K = 4
    assert np.mean(spread) < 0.004 < 20 * np.mean(spread)
    for level, cv_ratio, mean in (("max", 1.0, 0.004), ("max", 0.05, np.mean(spread)), ("cv", 0.05, 0.004),
                                  ("spread", 1.0, np.mean(spread)), ("geomean", 1.0, np.sqrt(np.mean(spread) * 0.004)),
                                  ("geomean", 0.05, np.sqrt(np.mean(spread) * 0.05 * 0.004))):
        calibration = uncertainty.Calibration(scale=1.5, mse_scale=0.8, cv_ratio=cv_ratio)
        row, error_std = uncertainty.slice_columns(recon, truth, region, std, maps, 0, 4,
                                                   dataclasses.replace(opts, cv_level=level), calibration)
        np.testing.assert_allclose(error_std, 1.5 * np.sqrt(spread * mean / np.mean(spread)))  # the spread's shape
        assert (row["cv_error"], row["spread_level"]) == (0.004, pytest.approx(np.mean(spread)))
        assert row["pred_psnr"] == pytest.approx(10 * np.log10(recon.max() ** 2 / (0.8 * 1.5 ** 2 * mean)))
    for level in ("geomean", "max", "cv"):  # one image and no replicas: a flat map at the held-out level
        row, flat = uncertainty.slice_columns(recon, truth, region, None, maps, 0, 1,
                                              dataclasses.replace(opts, cv_level=level), None)
        np.testing.assert_allclose(flat, np.sqrt(0.004))
        assert row["pred_psnr"] == pytest.approx(10 * np.log10(recon.max() ** 2 / 0.004))
        assert "spread_level" not in row


def test_the_geometric_mean_level_takes_the_positive_one_when_the_other_is_zero():
    assert uncertainty.cv_map_level(4e-4, 1e-3, "geomean", 0.4) == pytest.approx(4e-4)
    assert uncertainty.cv_map_level(0.0, 1e-3, "geomean", 0.4) == pytest.approx(4e-4)
    assert uncertainty.cv_map_level(2e-4, 0.0, "geomean", 0.4) == pytest.approx(2e-4)
    assert uncertainty.cv_map_level(0.0, 0.0, "geomean", 0.4) == 0.0
    assert uncertainty.cv_map_level(None, 1e-3, "geomean", 0.4) == 1e-3  # no spread: cv_error, as 'max'
    assert np.isnan(uncertainty.cv_map_level(2e-4, np.nan, "geomean", 0.4))  # a failed fold is not hidden


def _columns(slices, opts, calibration):
    """slice_columns of `slices` (truth, recon, std, cv), with what `read_maps` gives a calibration."""
    region = lambda image: image > 0.1  # noqa: E731
    out = []
    for s in slices:
        maps = {"sigma": np.array([0.01]), "misfit": np.array([1.0]), "cv_error": np.array([s["cv"]])}
        row, error_std = uncertainty.slice_columns(s["recon"], s["truth"], region, s["std"], maps, 0, 4, opts,
                                                   calibration)
        out.append({"recon": s["recon"], "truth": s["truth"], "error_std": error_std, "cv_error": row["cv_error"],
                    "spread_level": row["spread_level"], "pred_psnr": row["pred_psnr"]})
    return out


@pytest.mark.parametrize("cv_level", ["geomean", "max", "cv", "spread"])
def test_the_calibrated_map_is_the_one_the_calibration_was_fitted_on(cv_level):
    """`fit` on an uncalibrated validation run (ρ = 1) sets its maps to the fitted ρ (`at_level`); a run with the
    calibration then makes exactly those maps, times k, and its ±1.96σ covers 95 % of the validation pixels."""
    rng = np.random.default_rng(3)
    slices = []
    for spread_scale, cv in ((0.02, 4e-4), (0.01, 3e-3), (0.03, 1e-4)):  # levels that disagree both ways
        truth = np.pad(rng.uniform(0.5, 1.0, (16, 16)), 4)
        slices.append({"truth": truth, "recon": truth + rng.normal(0, 0.03, truth.shape), "cv": cv,
                       "std": spread_scale * rng.uniform(0.5, 1.5, truth.shape)})
    opts = uncertainty.Options(noise_replicas=0, error_smoothing=1.0, warn_misfit=0.0, warn_spread=0.0,
                               warn_baseline="", calibration="", cross_validate=True, cv_level=cv_level)
    validation = _columns(slices, opts, None)
    region = lambda image: image > 0.1  # noqa: E731
    calibration = uncertainty.fit(validation, region, cv_level)
    levels = np.array([[v["spread_level"], v["cv_error"]] for v in validation])
    expected = np.exp(np.mean(np.log(levels[:, 0] / levels[:, 1]))) if cv_level in ("geomean", "max") else 1.0
    assert calibration.cv_ratio == pytest.approx(expected)
    calibrated = _columns(slices, opts, calibration)
    for v, c, (spread_level, cv_error) in zip(uncertainty.at_level(validation, cv_level, calibration.cv_ratio),
                                               calibrated, levels):
        np.testing.assert_allclose(c["error_std"], calibration.scale * v["error_std"], rtol=1e-12)
        mean = {"max": max(spread_level, expected * cv_error), "cv": cv_error, "spread": spread_level,
                "geomean": np.sqrt(spread_level * expected * cv_error)}[cv_level]
        np.testing.assert_allclose(np.mean(c["error_std"] ** 2), calibration.scale ** 2 * mean, rtol=1e-12)
    inside = np.concatenate([np.abs(c["recon"] - c["truth"])[region(c["truth"])] <= 1.96 * c["error_std"][
        region(c["truth"])] for c in calibrated])
    assert inside.mean() == pytest.approx(0.95, abs=0.01)


def test_the_baseline_warning_averages_the_cross_validated_and_the_predicted_margin():
    truth = np.pad(np.full((10, 10), 0.8), 3)
    recon, std = truth + 0.02, np.full(truth.shape, 0.01)
    opts = uncertainty.Options(noise_replicas=0, error_smoothing=0.0, warn_misfit=0.0, warn_spread=0.0,
                               warn_baseline="sense", calibration="", cross_validate=True, cv_level="max")
    region = lambda image: image > 0.1  # noqa: E731
    calibration = uncertainty.Calibration(scale=1.0, mse_scale=1.0, baseline_ratio=0.5)
    maps = {"sigma": np.array([0.03]), "misfit": np.array([1.0]), "cv_error": np.array([0.004]),
            "cv_baseline": np.array([0.0031]), "baseline": (recon + 0.05)[None]}
    row, _ = uncertainty.slice_columns(recon, truth, region, std, maps, 0, 4, opts, calibration)
    mean_error = 0.0009 + (0.004 - 0.0009) * (1 + 1 / 4) / 2  # one sample's error → the mean of 4's, noise apart
    assert row["cv_margin"] == pytest.approx(10 * np.log10(0.0031 / mean_error))  # +0.38 dB: not clearly better
    predicted = 0.004  # the map's level: max(spread, cv_error), calibrated with k = c = 1
    assert row["pred_margin"] == pytest.approx(10 * np.log10(0.5 * (0.05 ** 2 + predicted) / predicted))  # −0.90
    assert row["margin"] == pytest.approx((row["cv_margin"] + row["pred_margin"]) / 2) and row["warn"] == 1
    reason = uncertainty.warnings(row, opts, True)[0]
    assert "estimated -0.26 dB better than sense (cv_margin +0.38 dB and pred_margin -0.90 dB" in reason
    maps["baseline"] = (recon + 0.1)[None]  # the same held-out lines, a prediction of +2.4 dB: the mean is +1.4
    row, _ = uncertainty.slice_columns(recon, truth, region, std, maps, 0, 4, opts, calibration)
    assert row["margin"] == pytest.approx((0.38 + 2.43) / 2, abs=0.01) and row["warn"] == 0
    row, _ = uncertainty.slice_columns(recon, truth, region, std, maps, 0, 4, opts, None)
    assert row["margin"] == row["cv_margin"] and row["warn"] == 1  # uncalibrated: the held-out lines alone
    row, _ = uncertainty.slice_columns(recon, truth, region, std, maps, 0, 1, opts, None)
    assert row["cv_margin"] == pytest.approx(10 * np.log10(0.0031 / 0.004))  # one sample is the output itself
    maps.update(cv_baseline=np.array([0.008]), baseline=recon[None])  # the baseline equals x̄: pred_margin −3 dB
    row, _ = uncertainty.slice_columns(recon, truth, region, std, maps, 0, 4, opts, calibration)
    assert row["cv_margin"] > 4 and row["pred_margin"] < 0 and row["margin"] > 0.5 and row["warn"] == 0
    del maps["cv_baseline"]  # no cross-validated baseline: the calibrated prediction decides
    row, _ = uncertainty.slice_columns(recon, truth, region, std, maps, 0, 4, opts, calibration)
    assert "cv_margin" not in row and row["margin"] == row["pred_margin"] and row["warn"] == 1
    row, _ = uncertainty.slice_columns(recon, truth, region, std, maps, 0, 4, opts, None)
    assert "margin" not in row and row["warn"] == 0  # uncalibrated: no prediction to warn with


@pytest.mark.parametrize("folds", [1, 2])
def test_the_harness_measures_the_held_out_lines(make_fastmri, tmp_path, folds):
    """`cv_error` of CG-SENSE and `cv_margin` over zero-filled: their reconstructions from the kept lines, against
    the held-out lines (numpy FFT), pooled over the folds, on the slices as the harness reads them."""
    from conftest import np_fft2c

    import datasets
    from configs.tiny import get_config
    from runners import build
    from runners.outputs import read_rows
    from runners.reconstruct import reconstruct

    data = make_fastmri("knee_test", files=1, slices=2, coils=3, shape=(32, 32), seed=4)
    config = get_config()
    config.data.test_roots.knee, config.sampling.datashift = data.root, "knee"
    config.sampling.method, config.sampling.cg_iters, config.sampling.cross_validate = "sense", 5, True
    config.sampling.warn_baseline, config.sampling.cv_folds = "zero_filled", folds
    config.sampling.output_dir = str(tmp_path / "out")
    reconstruct(config, str(tmp_path))
    rows = read_rows(str(tmp_path / "out" / "metrics.csv"))
    splits = [holdout_split(build.sample_mask(config), 4, fold, folds) for fold in range(folds)]
    dataset = datasets.make_dataset(config, "test")
    assert len(rows) == 2
    for index, row in enumerate(rows):
        item = dataset[index]
        kspace, maps = item["kspace"][None], item["maps"][None]
        expected = {}
        for name in ("sense", "zero_filled"):
            entry, settings = build.METHODS.entry(name), build.method_settings(config, name)
            squared = count = 0.0
            for kept, held in splits:
                on_held = held.reshape(held.shape[-2:]).numpy()
                x = entry.item(kspace * kept, maps, kept, settings)[0, 0].numpy().astype(np.complex128)
                squared += np.sum(np.abs((np_fft2c(maps[0].numpy() * x) - kspace[0].numpy()) * on_held) ** 2)
                count += 3 * on_held.sum()
            expected[name] = squared / count
        assert row["cv_error"] == pytest.approx(expected["sense"], rel=1e-4)
        assert row["cv_margin"] == pytest.approx(10 * np.log10(expected["zero_filled"] / expected["sense"]), abs=1e-3)
        assert np.isfinite(row["pred_psnr"])


def test_cross_validation_of_a_diffusion_method_leaves_its_reconstruction_alone(knee_test, tmp_path):
    import scipy.io

    from runners.outputs import read_rows
    from runners.reconstruct import reconstruct

    config, _ = knee_test
    config.sampling.num_samples, config.sampling.max_slices, config.sampling.show_progress = 2, 2, False
    results = {}
    for cross_validate in (False, True):
        out = tmp_path / f"cv{cross_validate}"
        config.sampling.cross_validate, config.sampling.output_dir = cross_validate, str(out)
        reconstruct(config, str(tmp_path))
        rows = read_rows(str(out / "metrics.csv"))
        results[cross_validate] = (rows, [scipy.io.loadmat(out / f"recon_{r['fname']}_{r['slice']}.mat")["recon"]
                                          for r in rows])
    (plain, plain_recon), (checked, checked_recon) = results[False], results[True]
    for a, b in zip(plain_recon, checked_recon):
        np.testing.assert_array_equal(a, b)  # the extra sample has its own noise stream
    assert all("cv_error" not in r for r in plain)
    assert all(r["cv_error"] > 0 and np.isfinite(r["pred_psnr"]) for r in checked)
