"""The error-map benchmark's settings (bench/bench_uncertainty.py): each way of building the map gets its folder."""
import argparse
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import bench_uncertainty  # noqa: E402

FOLDERS = {"test": "/d/test", "val": "/d/val", "test_maps": "/d/test_maps", "val_maps": "/d/val_maps"}


@pytest.mark.parametrize("cross_validate, cv_level, cv_every, cv_folds, folder",
                         [(False, "", 0, 0, "hfssde"), (True, "", 0, 0, "hfssde-cv"),
                          (True, "spread", 0, 0, "hfssde-cv-spread"), (True, "cv", 0, 0, "hfssde-cv-cv"),
                          (True, "max", 0, 0, "hfssde-cv-max"),
                          (True, "", 2, 0, "hfssde-cv2"), (True, "", 0, 1, "hfssde-cvf1"),
                          (True, "", 4, 3, "hfssde-cv4f3")])
def test_each_map_has_its_folder_and_options(cross_validate, cv_level, cv_every, cv_folds, folder):
    args = argparse.Namespace(max_slices=0, noise_replicas=4, num_samples=0, steps=0, cross_validate=cross_validate,
                              cv_level=cv_level, cv_every=cv_every, cv_folds=cv_folds)
    config = bench_uncertainty.uncertainty_config("hfssde", "fastmri", FOLDERS, 8, "/o", 1e-4, args, "test")
    s = config.sampling
    assert s.output_dir == f"/o/uncertainty/fastmri/acc8/test/{folder}"
    assert (s.cross_validate, s.cv_level, s.cv_every, s.cv_folds) == (cross_validate, cv_level or "geomean",
                                                                      cv_every or 4, cv_folds or 2)
    assert (s.warn_baseline, s.l1_lambda, s.noise_replicas) == ("l1wavelet", 1e-4, 4)
    assert config.data.eval_root == "/d/val"


@pytest.mark.parametrize("option", [["--cv-level", "cv"], ["--cv-every", "2"], ["--cv-folds", "1"]])
def test_cross_validation_options_without_cross_validation_are_refused(capsys, option):
    with pytest.raises(SystemExit):
        bench_uncertainty.main(["--rows", "fastmri", *option])
    message = f"{option[0]} only changes the map of a cross-validated run: add --cross-validate"
    assert message in capsys.readouterr().err
