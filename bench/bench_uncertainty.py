"""Error maps on the shift benchmark: calibration fitted on a row's validation slices, judged on its test slices.

    python bench/bench_uncertainty.py --rows fastmri project --acc 8          # each row calibrated on itself
    python bench/bench_uncertainty.py --rows fastmri project --acc 8 --transfer project   # + one calibration for all
    python bench/bench_uncertainty.py --rows fastmri --acc 8 --max-slices 1 --num-samples 2 --steps 5   # smoke test
    python bench/bench_uncertainty.py --rows fastmri --acc 8 --cross-validate --heads data/shift_bench/t2_contrast.npy \
        --out results/bench_contrast      # k-space cross-validation, on T2-weighted slices too (another --out)
    python bench/bench_uncertainty.py --rows fastmri --acc 8 --cross-validate --heads my_scan.nii.gz --only-heads \
        --out results/my_scan              # your own images alone as the test slices
    python bench/bench_uncertainty.py --rows fastmri --cross-validate --heads data/shift_bench/colin27.npy --only-heads \
        --out results/colin                # a second head never trained or tuned on (bench/README.md)

Rows, anatomy and data are those of bench/bench_shift.py (its functions make them; `--out` is shared with it, so the
simulated volumes and ℓ1-wavelet's λ tuned on each row's validation slices are reused). Per row and acceleration,
for each diffusion method (the brain demo configs' default sampler; `--num-samples`/`--steps` only shrink it for a
smoke test):

1. `main.py --mode calibrate` on the row's validation slices (runners/calibrate.py), with `--noise-replicas`
   pseudo-replicas and ℓ1-wavelet (the row's λ) as the warnings' baseline;
2. the row's test slices reconstructed with that calibration; per slice the harness reports the coverage of the
   calibrated map, its rank correlation with |error|, the predicted PSNR next to the true one, ℓ1-wavelet's PSNR
   on the same slice and the warning (runners/uncertainty.py).

With `--transfer ROW` every row's test slices are also reconstructed with the calibration (and ℓ1-wavelet λ) of ROW,
to show what transfers between acquisitions. Outputs go to
`<out>/uncertainty/<row>/acc<R>/{val,test}/<method>[-cv[<n>][f<folds>][-<level>]][_cal-<ROW>]/`; the table
(acceptance figures of issue 17) to `<out>/uncertainty/table.md`, the per-slice numbers to `results.json` and the
test reliability diagrams to `reliability.png` there.

Table columns: coverage of ±z·σ at 50/68/90/95 % (mean over test slices; 95 % is ±1.96σ), the pixel rank
correlation of the map with |error| and, in brackets, the one an exact map of the same values would reach for
Gaussian errors (utils/metrics.rank_ceiling), the share of slices whose predicted PSNR is within 1.5 dB of the true
one, warnings: hits (warned among slices where the method is below ℓ1-wavelet) and false warnings (warned among slices
where it is ≥ 1 dB above), and the run's warning.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_shift  # noqa: E402 - puts the repository on sys.path

from absl import logging as absl_logging  # noqa: E402

from runners.calibrate import calibrate  # noqa: E402
from runners.outputs import read_rows  # noqa: E402
from runners.reconstruct import reconstruct  # noqa: E402
from runners.uncertainty import CV_LEVELS, DEFAULTS  # noqa: E402
from utils.figures import save_reliability  # noqa: E402

METHODS = ("hfssde", "vpsde", "hfssde-pc")
WITHIN_DB = 1.5  # predicted PSNR counted as right within this many dB
CLEAR_WIN_DB = 1.0  # a warning where the method beats ℓ1-wavelet by this much is false


def uncertainty_config(method: str, row: str, folders: dict, acc: int, out: str, l1_lambda: float, args,
                       split: str, tag: str = ""):
    """The row's config of `method` (bench_shift.method_config) with the error map's options, writing to
    `<out>/uncertainty/<row>/acc<R>/<split>/<method><tag>`; validation slices are `data.eval_root`."""
    config = bench_shift.method_config(method, row, folders, "test", acc, out, max_slices=args.max_slices)
    s = config.sampling
    s.noise_replicas, s.warn_baseline, s.l1_lambda = args.noise_replicas, "l1wavelet", l1_lambda
    s.cross_validate = args.cross_validate
    if args.cv_level:
        s.cv_level = args.cv_level
    if args.cv_every:
        s.cv_every = args.cv_every
    if args.cv_folds:
        s.cv_folds = args.cv_folds
    if args.num_samples:
        s.num_samples = args.num_samples
    if args.steps:
        s.N = args.steps
    config.data.eval_root, config.data.eval_maps_root = folders["val"], folders["val"] + "_maps"
    config.training.skip_slices = 0
    kind = ("-cv" if args.cross_validate else "") + (str(args.cv_every) if args.cv_every else "") + \
        (f"f{args.cv_folds}" if args.cv_folds else "") + (f"-{args.cv_level}" if args.cv_level else "")
    s.output_dir = os.path.join(out, "uncertainty", row, f"acc{acc}", split, method + kind + tag)
    return config


def judge(folder: str) -> dict:
    """The acceptance figures of one test folder (module docstring) and its per-slice numbers."""
    rows = read_rows(os.path.join(folder, "metrics.csv"))
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    margin = [r["psnr"] - r["baseline_psnr"] for r in rows]
    losing = [r["warn"] for r, m in zip(rows, margin) if m < 0]
    winning = [r["warn"] for r, m in zip(rows, margin) if m >= CLEAR_WIN_DB]
    slices = [{k: r.get(k) for k in ("fname", "slice", "psnr", "pred_psnr", "baseline_psnr", "misfit", "spread_ratio",
                                     "detail", "pred_margin", "cv_margin", "margin", "coverage_95", "error_rank_corr",
                                     "error_rank_ceiling", "warn")}
              for r in rows]
    return {"coverage": [summary[f"coverage_{p}"] for p in (50, 68, 90, 95)],
            "rank_corr": summary["error_rank_corr"],
            "rank_ceiling": summary.get("error_rank_ceiling", float("nan")),  # nan: a folder of an older version
            "within": sum(abs(r["pred_psnr"] - r["psnr"]) <= WITHIN_DB for r in rows) / len(rows),
            "hits": (sum(losing), len(losing)), "false": (sum(winning), len(winning)),
            "warning": summary.get("warning", 0), "psnr": summary["psnr"], "pred_psnr": summary["pred_psnr"],
            "l1_psnr": summary["baseline_psnr"], "reliability": summary["reliability"], "slices": slices}


class Calibrations:
    """The calibration of each (row, acceleration, method), fitted once on the row's validation slices, with the
    row's ℓ1-wavelet λ."""

    def __init__(self, heads, args):
        self.heads, self.args, self.done = heads, args, {}

    def folders(self, row: str) -> dict:
        return bench_shift.row_data(self.args.out, row, self.heads)

    def get(self, row: str, acc: int, method: str) -> tuple[str, float]:
        """`(calibration.json path, ℓ1-wavelet λ)` of the row."""
        key = (row, acc, method)
        if key not in self.done:
            folders = self.folders(row)
            lam = bench_shift.tune_l1(row, folders, acc, self.args.out)
            config = uncertainty_config(method, row, folders, acc, self.args.out, lam, self.args, "val")
            self.done[key] = (calibrate(config, self.args.out, self.args.val_slices)["path"], lam)
        return self.done[key]


def run(row: str, acc: int, method: str, calibrations: Calibrations, transfer: str | None) -> list[dict]:
    """Judge `method` on the row's test slices with the row's own calibration (and `transfer`'s); one entry per
    calibration used."""
    entries = []
    for source in dict.fromkeys([row] + ([transfer] if transfer else [])):
        path, lam = calibrations.get(source, acc, method)
        tag = "" if source == row else f"_cal-{source}"
        config = uncertainty_config(method, row, calibrations.folders(row), acc, calibrations.args.out, lam,
                                    calibrations.args, "test", tag)
        config.sampling.calibration = path
        reconstruct(config, calibrations.args.out)
        entries.append({"row": row, "acc": acc, "method": method, "calibrated_on": source,
                        **judge(config.sampling.output_dir)})
        print(format_table(entries[-1:], header=False), flush=True)
    return entries


def format_table(entries: list[dict], header: bool = True) -> str:
    lines = []
    if header:
        lines += ["| row | acc | method | calibrated on | cover 50 / 68 / 90 / 95 % | rank corr. (ceiling) | "
                  "PSNR: true / predicted / ℓ1 | pred. within 1.5 dB | warned: hits / false | run warned |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        cover = " / ".join(f"{c:.2f}" for c in e["coverage"])
        hits, false = (f"{n}/{d}" if d else "–" for n, d in (e["hits"], e["false"]))
        lines.append(f"| {e['row']} | {e['acc']}× | {bench_shift.LABELS[e['method']]} | {e['calibrated_on']} | "
                     f"{cover} | {e['rank_corr']:.2f} ({e['rank_ceiling']:.2f}) | {e['psnr']:.2f} / "
                     f"{e['pred_psnr']:.2f} / {e['l1_psnr']:.2f} | {e['within']:.0%} | {hits} / {false} | "
                     f"{'yes' if e['warning'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=sorted(bench_shift.ROWS), default=list(bench_shift.ROWS))
    parser.add_argument("--acc", nargs="+", type=int, default=[8, 10])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["hfssde"])
    parser.add_argument("--transfer", choices=sorted(bench_shift.ROWS), help="also judge every row with the "
                        "calibration fitted on this row's validation slices")
    parser.add_argument("--noise-replicas", type=int, default=4, help="sampling.noise_replicas")
    parser.add_argument("--cross-validate", action="store_true", help="sampling.cross_validate (folders <method>-cv)")
    parser.add_argument("--cv-level", choices=[v for v in CV_LEVELS if v != DEFAULTS["cv_level"]], default="",
                        help=f"with --cross-validate: sampling.cv_level (default: the config's, "
                        f"'{DEFAULTS['cv_level']}'; folders <method>-cv-<level>)")
    parser.add_argument("--cv-every", type=int, default=0, help="with --cross-validate: sampling.cv_every, every "
                        "n-th outer line held out (0: the config's, 4; folders <method>-cv<n>)")
    parser.add_argument("--cv-folds", type=int, default=0, help="with --cross-validate: sampling.cv_folds, disjoint "
                        "held-out folds (0: the config's, 2; folders <method>-cv[<n>]f<folds>)")
    parser.add_argument("--val-slices", type=int, default=2, help="validation slices of the calibration")
    parser.add_argument("--max-slices", type=int, default=0, help="the first K test slices only (0: all)")
    parser.add_argument("--num-samples", type=int, default=0, help="posterior samples (0: the config's)")
    parser.add_argument("--steps", type=int, default=0, help="sampling.N (0: the config's; smoke tests only)")
    parser.add_argument("--heads", nargs="*", default=[], help="more test images, as in bench_shift.py")
    parser.add_argument("--head-slices", default="all", help=bench_shift.HEAD_SLICES_HELP)
    parser.add_argument("--only-heads", action="store_true", help=bench_shift.ONLY_HEADS_HELP)
    parser.add_argument("--out", default="results/bench_shift")
    args = parser.parse_args(argv)
    for option in ("cv_level", "cv_every", "cv_folds"):
        if getattr(args, option) and not args.cross_validate:
            parser.error(f"--{option.replace('_', '-')} only changes the map of a cross-validated run: add "
                         f"--cross-validate")
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    from data_prepare.espirit import bart_binary  # noqa: PLC0415

    rows = [r for r in args.rows if bench_shift.ROWS[r].maps_backend != "bart" or bart_binary()]
    for skipped in sorted(set(args.rows) - set(rows)):
        print(f"row {skipped} skipped: the bart binary is not installed (apt-get install bart)")
    heads = bench_shift.load_heads(args.heads, args.only_heads, args.head_slices)
    print(format_table([]))
    calibrations = Calibrations(heads, args)
    entries = bench_shift.run_entries(args.out, lambda: [
        e for row in rows for acc in args.acc for method in args.methods
        for e in run(row, acc, method, calibrations, args.transfer)])
    out = os.path.join(args.out, "uncertainty")
    table = format_table(entries)
    bench_shift.write_report(out, table, entries)
    save_reliability(os.path.join(out, "reliability.png"),
                     {f"{e['row']} {e['acc']}× (cal. {e['calibrated_on']})": tuple(e["reliability"].values())
                      for e in entries}, "test slices, calibrated error maps")
    print(f"\n{table}\ntable, results.json and reliability.png in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
