"""Accuracy against network evaluations: PSNR and SSIM of the PC and DDIM samplers at several step counts on the
bundled demo test slices, with the seconds per slice and their ratio to the 100-step PC sampler measured in one run.

    python bench/bench_nfe.py                          # phantom and brain demo sets, 4× and 8× (about 5 min here)
    python bench/bench_nfe.py --sets phantom --accs 8 --out results/bench_nfe

Prints one Markdown table per set and writes `nfe_curve.png` (PSNR against NFE, one line per sampler and
acceleration) to `--out`. Sampler settings are those of the demo configs with one sample per slice; only
`sampling.method` and `sampling.N` change (both samplers use accelerated sampling here, so `N` is the step count).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import logging as absl_logging  # noqa: E402

from runners.demo import SETS  # noqa: E402
from runners.reconstruct import reconstruct  # noqa: E402
from utils.figures import save_curves  # noqa: E402

STEP_COUNTS = {"pc": (25, 100), "ddim": (10, 25, 50)}  # sampler -> sampling.N values measured


def measure(name: str, accelerations, out: str, slices: int) -> list[dict]:
    factory = SETS[name][0]
    rows = []
    for acc in accelerations:
        for method, step_counts in STEP_COUNTS.items():
            for steps in step_counts:
                config = factory()
                config.sampling.method, config.sampling.N, config.sampling.acc = method, steps, acc
                config.sampling.num_samples, config.sampling.max_slices = 1, slices
                config.sampling.show_progress = False
                config.sampling.output_dir = os.path.join(out, name, f"acc{acc}", f"{method}_N{steps}")
                summary = reconstruct(config, out)
                rows.append({**summary, "set": name, "acc": acc, "method": method, "steps": steps})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| acc | sampler | steps | NFE | PSNR (dB) | SSIM | s/slice | time / PC-100 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reference = next(p for p in rows if p["acc"] == r["acc"] and p["method"] == "pc" and p["steps"] == 100)
        lines.append(f"| {r['acc']}× | {r['method']} | {r['steps']} | {r['nfe']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{r['seconds_per_slice']:.2f} | {r['seconds_per_slice'] / reference['seconds_per_slice']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=sorted(SETS))
    parser.add_argument("--accs", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--out", default="results/bench_nfe")
    parser.add_argument("--slices", type=int, default=2, help="test slices per set (0: all)")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    curves = {}
    for name in args.sets:
        rows = measure(name, args.accs, args.out, args.slices)
        print(f"{name} demo set ({rows[0]['n_slices']} slices):\n{table(rows)}\n")
        for r in rows:
            curves.setdefault(f"{name} {r['acc']}× {r['method']}", []).append((r["nfe"], r["psnr"]))
    save_curves(os.path.join(args.out, "nfe_curve.png"), curves, "network evaluations per slice", "PSNR (dB)")
    print(f"plot: {os.path.join(args.out, 'nfe_curve.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
