"""`main.py --mode calibrate`: fit the error map's calibration (runners/uncertainty.py) on validation slices.

    python main.py --mode calibrate --config configs/hfssde/brain_demo.py --config.sampling.noise_replicas=4 \
        [--tune_slices 2]

The method reconstructs the first `--tune_slices` slices of `data.eval_root` (never the test set) through the
reconstruction harness, uncalibrated, into `<workdir>/calibrate/<identity>/` (or `sampling.output_dir`), with every
output of a reconstruction (a rerun reuses the finished slices); then `uncertainty.fit` finds the map's scale k, the
MSE scale c, the baseline ratio r and, with cross-validation, the ratio ρ of the map's two levels on them, and
`calibration.json` (the numbers, the setting they hold for, the validation coverage before and after, the predicted
and true PSNR of each slice) and `reliability.png` (before and after) are written there. One override applies it to a
test run of the same setting: `--config.sampling.calibration=<workdir>/calibrate/<identity>/calibration.json`.

Under `torchrun` the ranks share the validation slices as in a reconstruction; rank 0 alone fits and writes the
calibration (the other ranks return None).
"""
from __future__ import annotations

import copy
import json
import logging
import os

from runners import uncertainty
from runners.distributed import launch_rank
from runners.first_use import prepare_data
from runners.outputs import mat_path, read_rows
from runners.reconstruct import reconstruct
from runners.reconstructor import object_support
from utils import metrics
from utils.figures import save_reliability


def calibrate(config, workdir: str, num_slices: int = 2) -> dict | None:
    """Fit the calibration of `config`'s method on `num_slices` validation slices (module docstring); returns the
    report written to `calibration.json`, with its `path` (None on a `torchrun` rank other than 0)."""
    config = copy.deepcopy(config)
    if config.sampling.calibration:
        logging.info("sampling.calibration=%s is not used while calibrating", config.sampling.calibration)
    config.sampling.calibration = ""
    config.sampling.max_slices = num_slices
    prepare_data([config.data.eval_root], config.data.image_size)
    out = reconstruct(config, workdir, split="eval")["folder"]
    if launch_rank() != 0:
        return None
    rows = read_rows(os.path.join(out, "metrics.csv"))
    slices = uncertainty.read_maps(out, rows, mat_path)
    opts = uncertainty.options(config)
    calibration = uncertainty.fit(slices, object_support, opts.cv_level, opts.detail_power)
    scaled = uncertainty.calibrated(slices, calibration, opts.cv_level, opts.detail_power)
    predicted = [metrics.predicted_psnr(float(s["recon"].max()), calibration.mse_scale * s["error_std"] ** 2)
                 for s in scaled]
    report = {"slices": len(slices), "data": config.data.eval_root,
              "before": uncertainty.reliability(slices, object_support),
              "after": uncertainty.reliability(scaled, object_support),
              "psnr": [metrics.psnr(s["truth"], s["recon"]) for s in slices], "pred_psnr": predicted}
    with open(os.path.join(out, "setting.json")) as f:
        identity = json.load(f)
    path = os.path.join(out, "calibration.json")
    uncertainty.write_calibration(path, calibration, identity, opts, report)
    save_reliability(os.path.join(out, "reliability.png"),
                     {"uncalibrated": tuple(report["before"].values()), "calibrated": tuple(report["after"].values())},
                     f"{len(slices)} validation slice(s): k = {calibration.scale:.3g}, c = {calibration.mse_scale:.3g}")
    before, after = (dict(zip(report[k]["nominal"], report[k]["observed"]))[uncertainty.CALIBRATION_LEVEL]
                     for k in ("before", "after"))
    logging.info("calibrated on %d validation slices: scale %.4g, MSE scale %.4g, baseline ratio %.4g, level ratio "
                 "%.4g, detail %.4g; coverage of the 95 %% interval %.3f before, %.3f after; predicted PSNR %s against "
                 "%s (dB) -> %s", len(slices), calibration.scale, calibration.mse_scale, calibration.baseline_ratio,
                 calibration.cv_ratio, calibration.detail, before, after, [round(p, 2) for p in predicted],
                 [round(p, 2) for p in report["psnr"]], path)
    return {**report, "calibration": calibration, "path": path}
