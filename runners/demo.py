"""The bundled demo: reconstruct the phantom test slices at 4× and 8× with HFS-SDE, VP-SDE and the classical
baselines, print a table and write the figures.

    bash test_fastMRI.sh demo            # = python -m runners.demo
    bash test_fastMRI.sh demo --fast     # smoke test: one slice, 10 sampling steps

Outputs go to `results/demo/` (`results/demo_fast/` with `--fast`; `--out` to change): one folder per method and
acceleration with the usual reconstruction outputs (runners/reconstruct.py), `table.md`, `summary.json` and
`comparison_acc{R}.png`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np
import scipy.io
from absl import logging as absl_logging

from configs.hfssde.phantom_demo import get_config as hfs_config
from configs.vp.phantom_demo import get_config as vp_config
from utils.figures import save_comparison
from runners.reconstruct import reconstruct

ACCELERATIONS = (4, 8)
# (label, config factory, sampling.method)
METHODS = [("zero-filled", hfs_config, "zero_filled"), ("CG-SENSE", hfs_config, "sense"),
           ("L1-wavelet", hfs_config, "l1wavelet"), ("VP-SDE", vp_config, "pc"), ("HFS-SDE", hfs_config, "pc")]


def demo_config(factory, method: str, acc: int, out: str, fast: bool):
    config = factory()
    config.sampling.method, config.sampling.acc = method, acc
    config.sampling.show_progress = False
    config.sampling.output_dir = os.path.join(out, f"acc{acc}", method if method != "pc" else config.training.sde)
    if fast:
        config.sampling.N, config.sampling.max_slices = 10, 1
    return config


def run(out: str, fast: bool) -> list[dict]:
    rows = []
    for acc in ACCELERATIONS:
        for label, factory, method in METHODS:
            config = demo_config(factory, method, acc, out, fast)
            if method == "pc" and not os.path.isfile(config.sampling.checkpoint):
                logging.warning("%s skipped: no demo weights at %s (train them with the command in README.md)",
                                label, config.sampling.checkpoint)
                continue
            summary = reconstruct(config, out)
            rows.append({**summary, "method": label, "acc": acc, "folder": config.sampling.output_dir})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| acc | method | NMSE | PSNR (dB) | SSIM | s/slice | NFE |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['acc']}× | {r['method']} | {r['nmse']:.4f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{r['seconds_per_slice']:.2f} | {r['nfe']} |")
    return "\n".join(lines)


def figures(rows: list[dict], out: str) -> None:
    """`comparison_acc{R}.png`: the first test slice, every method side by side with the ground truth."""
    for acc in ACCELERATIONS:
        panels, truth = [], None
        for r in (r for r in rows if r["acc"] == acc):
            name = sorted(f for f in os.listdir(r["folder"]) if f.startswith("recon_") and f.endswith(".mat"))[0]
            mat = scipy.io.loadmat(os.path.join(r["folder"], name))
            truth = np.abs(mat["ground_truth"])
            panels.append((r["method"], np.abs(mat["recon"]), {"psnr": r["psnr"], "ssim": r["ssim"]}))
        if panels:
            save_comparison(os.path.join(out, f"comparison_acc{acc}.png"), panels, truth)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="output folder (default results/demo, or results/demo_fast with --fast)")
    parser.add_argument("--fast", action="store_true", help="one slice and 10 sampling steps (smoke test)")
    args = parser.parse_args(argv)
    args.out = args.out or ("results/demo_fast" if args.fast else "results/demo")
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    rows = run(args.out, args.fast)
    text = table(rows)
    print(f"Phantom demo ({'fast smoke test' if args.fast else 'full'}), uniform masks with 24 ACS lines, "
          f"{rows[0]['n_slices']} slice(s) per setting:\n{text}")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(rows, f, indent=2)
    figures(rows, args.out)
    print(f"figures and per-slice outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
