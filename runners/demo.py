"""The bundled demo: reconstruct a held-out brain slice (4×, 8×, 10×; and with `--sets` the phantom slices at 4×, 8×)
with HFS-SDE, VP-SDE, the fast HFS-SDE sampler and the classical baselines; print the tables and write the figures.

    bash test_fastMRI.sh demo            # = python -m runners.demo
    bash test_fastMRI.sh demo --fast     # smoke test: one slice, 10 sampling steps
    bash test_fastMRI.sh demo --slices 0 # every bundled test slice (4 per set) instead of the first one
    bash test_fastMRI.sh demo --sets brain phantom   # the phantom set too
    bash test_fastMRI.sh demo --calibrate  # calibrate the error maps on validation slices first

"HFS-SDE fast" is one 50-step DDIM sample: posterior sample 0 of the HFS-SDE run, the reconstruction that
`sampling.num_samples=1` gives (it keeps the slice's seed, `sampling.posterior_seeds`), scored on its own; its time and
network evaluations are the run's divided by the number of samples (they run as one batch).

Every method of a set runs on the same slices, masks (uniform, 24 ACS lines) and metrics; the settings come from
the demo configs (`configs/{hfssde,vp}/{brain,phantom}_demo.py`), which were chosen on validation slices. Outputs go
to `results/demo/` (`default_out`: `results/demo_fast/` with `--fast`, `results/demo_all/` with `--slices 0`,
`…_calibrated/` with `--calibrate`, so that each kind of run keeps its own folders; `--out` to change; a rerun
reuses the finished slices): one folder per set, acceleration and
method with the usual reconstruction outputs (runners/reconstruct.py; with `--calibrate` the validation slices'
reconstructions and `calibration.json` in `acc{R}/validation/<method>/`), `table.md` (with the error maps' coverage,
rank correlation and predicted PSNR), `summary.json`, `comparison_<set>_acc{R}.png` and `reliability_<set>.png`.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys

import numpy as np
import scipy.io
from absl import logging as absl_logging

from configs.hfssde.brain_demo import get_config as hfs_brain
from configs.hfssde.phantom_demo import get_config as hfs_phantom
from configs.vp.brain_demo import get_config as vp_brain
from configs.vp.phantom_demo import get_config as vp_phantom
from runners.build import is_diffusion
from runners.calibrate import calibrate
from runners.outputs import mat_path, read_rows
from runners.reconstruct import reconstruct
from utils.atomic import atomic_path, write_json
from utils.figures import save_comparison, save_reliability

# set -> (HFS-SDE config, VP-SDE config, accelerations)
SETS = {"brain": (hfs_brain, vp_brain, (4, 8, 10)), "phantom": (hfs_phantom, vp_phantom, (4, 8))}
# (label, which config, sampling overrides)
METHODS = [("zero-filled", "hfs", {"method": "zero_filled", "num_samples": 1}),
           ("CG-SENSE", "hfs", {"method": "sense", "num_samples": 1}),
           ("L1-wavelet", "hfs", {"method": "l1wavelet", "num_samples": 1}), ("VP-SDE", "vp", {}),
           ("HFS-SDE", "hfs", {})]
FAST = "HFS-SDE fast"  # sample 0 of the HFS-SDE run (module docstring)
DEFAULT_SETS = ("brain",)


def demo_config(factory, overrides: dict, acc: int, out: str, fast: bool, slices: int):
    config = factory()
    for key, value in overrides.items():
        config.sampling[key] = value
    config.sampling.acc = acc
    config.sampling.show_progress = False
    name = (f"{config.training.sde}_{config.sampling.method}_K{config.sampling.num_samples}"
            if is_diffusion(config.sampling.method) else config.sampling.method)
    config.sampling.output_dir = os.path.join(out, f"acc{acc}", name)
    config.sampling.max_slices = slices
    if fast:
        config.sampling.N, config.sampling.max_slices = 10, 1
    return config


def run(name: str, out: str, fast: bool, slices: int, calibrated: bool = False) -> list[dict]:
    """Every method of set `name` at its accelerations; with `calibrated` the diffusion methods' error maps are first
    calibrated on the set's validation slices (`main.py --mode calibrate`, runners/calibrate.py)."""
    hfs, vp, accelerations = SETS[name]
    rows = []
    for acc in accelerations:
        for label, which, overrides in METHODS:
            config = demo_config(hfs if which == "hfs" else vp, overrides, acc, out, fast, slices)
            if is_diffusion(config.sampling.method) and not os.path.isfile(config.sampling.checkpoint):
                logging.warning("%s skipped: no demo weights at %s (train them with the commands in demo/README.md)",
                                label, config.sampling.checkpoint)
                continue
            if calibrated and is_diffusion(config.sampling.method) and (
                    config.sampling.num_samples > 1 or config.sampling.noise_replicas > 0):
                validation = copy.deepcopy(config)
                validation.sampling.output_dir = os.path.join(out, f"acc{acc}", "validation",
                                                              os.path.basename(config.sampling.output_dir))
                config.sampling.calibration = calibrate(validation, out)["path"]
            summary = reconstruct(config, out)
            rows.append({**summary, "set": name, "method": label, "acc": acc, "folder": config.sampling.output_dir})
            if label == "HFS-SDE" and "sample_psnr" in summary:
                rows.append(first_sample(rows[-1]))
    return rows


def first_sample(row: dict) -> dict:
    """The `FAST` row of an HFS-SDE `row` of K > 1 samples: sample 0's metrics, the run's time and NFE over K."""
    k = row["num_samples"]
    return {**{key: row[key] for key in ("set", "acc", "folder", "n_slices")}, "method": FAST,
            "nmse": row["sample_nmse"], "psnr": row["sample_psnr"], "ssim": row["sample_ssim"],
            "seconds_per_slice": row["seconds_per_slice"] / k, "nfe": row["nfe"] // k, "num_samples": 1}


def table(rows: list[dict]) -> str:
    lines = ["| acc | method | NMSE | PSNR (dB) | SSIM | s/slice | NFE |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['acc']}× | {r['method']} | {r['nmse']:.4f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{r['seconds_per_slice']:.2f} | {r['nfe']} |")
    mapped = [r for r in rows if "coverage_95" in r]
    if mapped:
        lines += ["", "Error maps (runners/uncertainty.py; coverage of ±z·error std on the object's pixels):", "",
                  "| acc | method | calibrated | cover 50 / 68 / 90 / 95 % | rank corr. | predicted PSNR | PSNR | warned |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in mapped:
            cover = " / ".join(f"{r[f'coverage_{p}']:.2f}" for p in (50, 68, 90, 95))
            lines.append(f"| {r['acc']}× | {r['method']} | {'yes' if r['calibrated'] else 'no'} | {cover} | "
                         f"{r['error_rank_corr']:.2f} | {r['pred_psnr']:.2f} | {r['psnr']:.2f} | {r['n_warned']} |")
    return "\n".join(lines)


def figures(rows: list[dict], out: str, name: str) -> None:
    """`comparison_<set>_acc{R}.png`: the first test slice, every method side by side (and HFS-SDE's predicted error
    std, 5× brighter) with the ground truth, each titled with that slice's own PSNR and SSIM; `reliability_<set>.png`:
    HFS-SDE's reliability diagram at each acceleration (runners/uncertainty.py)."""
    for acc in sorted({r["acc"] for r in rows}):
        panels, truth = [], None
        for r in (r for r in rows if r["acc"] == acc):
            first = read_rows(os.path.join(r["folder"], "metrics.csv"))[0]
            mat = scipy.io.loadmat(mat_path(r["folder"], first["fname"], first["slice"]))
            truth = np.abs(mat["ground_truth"])
            if r["method"] == FAST:
                scores = {"psnr": first["sample_psnr"], "ssim": first["sample_ssim"]}
                panels.append((f"{FAST} (one sample)", np.abs(mat["sample"]), scores))
                continue
            samples = f" (mean of {r['num_samples']} samples)" if r["num_samples"] > 1 else ""
            panels.append((r["method"] + samples, np.abs(mat["recon"]), first))
            if r["method"] == "HFS-SDE" and "error_std" in mat:
                state = "calibrated" if r["calibrated"] else "uncalibrated"
                panels.append((f"HFS-SDE predicted error std ({state}) ×5", 5 * mat["error_std"], None))
        heading = (f"{name.capitalize()} demo, test slice {first['fname']} #{first['slice']}, {acc}× (uniform mask, "
                   f"24 ACS lines): PSNR and SSIM of this slice")
        save_comparison(os.path.join(out, f"comparison_{name}_acc{acc}.png"), panels, truth, heading)
    curves = {f"{r['acc']}×{'' if r['calibrated'] else ' (uncalibrated)'}": tuple(r["reliability"].values())
              for r in rows if r["method"] == "HFS-SDE" and "reliability" in r}
    if curves:
        save_reliability(os.path.join(out, f"reliability_{name}.png"), curves,
                         f"{name.capitalize()} demo, HFS-SDE error maps, test slices")


def default_out(fast: bool, slices: int, calibrated: bool) -> str:
    """`results/demo[_fast|_all|_<N>slices][_calibrated]`: runs on other slices or with a calibration are other
    settings (runners/identity.py), so they get their own folders instead of refusing the default run's."""
    kind = "_fast" if fast else "" if slices == 1 else "_all" if slices == 0 else f"_{slices}slices"
    return f"results/demo{kind}{'_calibrated' if calibrated else ''}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="output folder (default results/demo; results/demo_fast with --fast, "
                                      "results/demo_all with --slices 0, ..._calibrated with --calibrate)")
    parser.add_argument("--fast", action="store_true", help="one slice and 10 sampling steps (smoke test)")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(DEFAULT_SETS),
                        help="which test sets (default: brain; the phantom set adds about 3 minutes)")
    parser.add_argument("--calibrate", action="store_true",
                        help="calibrate the diffusion methods' error maps on 2 validation slices first (slower)")
    parser.add_argument("--slices", type=int, default=1,
                        help="test slices per set (default 1: 2 to 5 minutes for the brain set on a quiet 2-core "
                             "CPU; 0: all four of each set, about four times as long)")
    args = parser.parse_args(argv)
    args.out = args.out or default_out(args.fast, args.slices, args.calibrate)
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    rows, texts = [], []
    for name in args.sets:
        try:
            set_rows = run(name, os.path.join(args.out, name), args.fast, args.slices, args.calibrate)
        except (ValueError, OSError) as err:
            sys.exit(f"demo: error: {err}")
        figures(set_rows, args.out, name)
        texts.append(f"{name.capitalize()} demo ({'fast smoke test' if args.fast else 'full'}), uniform masks with "
                     f"24 ACS lines, {set_rows[0]['n_slices']} slice(s) per setting:\n{table(set_rows)}")
        rows += set_rows
    text = "\n\n".join(texts)
    print(text)
    with atomic_path(os.path.join(args.out, "table.md")) as tmp, open(tmp, "w") as f:
        f.write(text + "\n")
    write_json(os.path.join(args.out, "summary.json"), rows)
    print(f"figures and per-slice outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
