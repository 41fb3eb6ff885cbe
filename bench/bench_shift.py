"""Shift benchmark: the brain demo networks and the classical baselines on held-out heads through acquisitions the
networks were not trained with.

    python bench/bench_shift.py                                   # every row, 4x 8x 10x (long: see bench/README.md)
    python bench/bench_shift.py --rows fastmri project --acc 8    # a part; finished slices are reused
    python bench/bench_shift.py --heads my_scan.nii.gz --rows fastmri   # add your own magnitude images as test slices
    python bench/bench_shift.py --heads my_scan.nii.gz --only-heads --rows fastmri --out results/my_scan   # only them
    python bench/bench_shift.py --heads my_scan.nii.gz --head-slices 40:120:20 --only-heads --out results/my_scan

Anatomy (`data/shift_bench/heads.npz`, made by `--make-heads --source <folder with the nilearn and dipy wheels and
the unpacked mricron-data package>`):
validation = the brain set's two validation slices (z = 116, 120 mm of the MNI152 template, with skull and scalp),
test = a head the project never trained on (the coronal T1 slice shipped with dipy) and the brain set's four test
slices (z = 74 … 86 mm), in that order, all 128 × 128 magnitudes in [0, 1]. Training used other slabs of the
template only, axial, brain-only. `--make-heads` also writes two sets to add with `--heads`:
`data/shift_bench/t2_contrast.npy` (four T2-weighted scanner slices, dipy) and `data/shift_bench/mismatch.npy`
(`MISMATCH_IMAGES`: scikit-image's phantom, photographs, retina, textures and text, and a test slice with three
sharp lesions), images the brain prior does not fit, where a diffusion method can lose to ℓ1-wavelet, and
`data/shift_bench/colin27.npy` (five axial slices of a second head never trained or tuned on: Colin27, `COLIN`).
`--head-slices` picks slices of the `--heads` files (a whole NIfTI volume is otherwise every axial slice).

Rows (`ROWS`): acquisitions made by `data_prepare/simulate_multicoil.py` — the project's own simulator (the one the
brain set was made with), a fastMRI-like scan (2× readout oversampling cropped in the image domain, 8 birdcage
coils around the whole field of view, noise at 1 % of the brightest coil image, ESPIRiT maps from the whole matrix)
and variations of it (4 or 16 coils, no noise, 40 dB, 30 dB, BART maps, surface loops with correlated noise).
Each row gets its own validation and test volumes (`<out>/data/<row>/`).

Per row and acceleration (uniform masks, 24 ACS lines): zero-filled, CG-SENSE, ℓ1-wavelet with λ chosen on the
row's validation slices (PSNR-best of `L1_GRID`), VP-SDE and HFS-SDE with the brain demo configs' default sampler,
HFS-SDE with the published PC sampler (`hfssde-pc`: 100 steps, one sample, the same budget), and both networks
fine-tuned with a randomised acquisition under the default sampler (`hfssde-acq`, `vpsde-acq`; demo/README.md), all
through the reconstruction harness (runners/reconstruct.py, so every output and per-slice metric is kept in
`<out>/<row>/acc<R>/<method>/`). Each row also reports why it is hard: `noise×`, the CG-SENSE noise amplification
(rms of the CG-SENSE reconstruction of white k-space noise over that of the fully sampled coil combination, on the
coil-map support, mean over the test slices: the mean g-factor times √R), and `σ̂/σ`, the noise level the samplers
estimate against the true one.

Prints and writes `<out>/table.md` (mean PSNR / SSIM over the test slices, the worst slice's margin of HFS-SDE over
ℓ1-wavelet) and `<out>/shift_margin.png`.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import zipfile
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from baselines import BASELINES  # noqa: E402
from configs.hfssde.brain_demo import get_config as hfs_brain  # noqa: E402
from configs.vp.brain_demo import get_config as vp_brain  # noqa: E402
from data_prepare.fastmri_io import write_kspace_file, write_maps_file  # noqa: E402
from data_prepare.simulate_multicoil import (  # noqa: E402
    ACQUISITIONS, fit_to_size, load_stack, select_slices, simulate_volume)
from runners.reconstruct import reconstruct  # noqa: E402
from runners.folders import FolderBusy  # noqa: E402
from runners.outputs import OtherSetting  # noqa: E402
from utils.atomic import atomic_path, write_json  # noqa: E402
from utils.masks import make_mask  # noqa: E402
from utils.mri import center_crop, conjugate_gradient, crop_kspace, sense_adjoint, sense_normal  # noqa: E402
from utils.noise import noise_sigma  # noqa: E402

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADS = os.path.join(REPOSITORY, "data", "shift_bench", "heads.npz")
# Scanner slices of another contrast than every image above (T2-weighted: bright fluid), for `--heads`: the dipy
# wheel's b0 volume of a diffusion scan (128², 2 mm; two axial slices) and its anisotropic-voxel volume (58², 4 mm).
CONTRAST = os.path.join(REPOSITORY, "data", "shift_bench", "t2_contrast.npy")
OTHER_CONTRAST = {"S0_10slices.nii.gz": (4, 6), "aniso_vox.nii.gz": (12, 15)}
# Images the brain prior does not fit, for `--heads` (the warnings of runners/uncertainty.py need slices where a
# diffusion method loses): scikit-image's sample images and a test slice with three sharp lesions (`LESIONS`).
MISMATCH = os.path.join(REPOSITORY, "data", "shift_bench", "mismatch.npy")
MISMATCH_IMAGES = ("shepp_logan_phantom", "camera", "coins", "microaneurysms", "moon", "retina", "brick", "grass",
                   "text", "cell", "binary_blobs")
LESIONS = ((50, 45, 5, 1.0), (70, 80, 4, 0.9), (85, 55, 6, 0.05))  # row, column, radius (pixels), intensity
# A second head the project never trained or tuned on, for `--heads`: Colin27, one volunteer scanned 27 times and
# averaged (T1, 1 mm, with skull; the `ch2.nii.gz` of the Debian package mricron-data), five axial slices at these
# indices of its 181, from the skull base to the vertex, 217 × 181 as stored (`load_heads` fits them to SIZE).
COLIN = os.path.join(REPOSITORY, "data", "shift_bench", "colin27.npy")
COLIN_SLICES = (55, 70, 85, 100, 115)
SIZE, ACS = 128, 24
HEAD_SLICES_HELP = ("the slices of each --heads file to test on: all (default), start:stop[:step] or i,j,k (of a "
                    "NIfTI volume's axial slices, of a .npy or TIFF stack's first axis)")
ONLY_HEADS_HELP = ("test on the --heads images alone, without the bundled test heads (the validation slices stay); "
                   "their volumes need an --out of their own")
FASTMRI = ACQUISITIONS["fastmri"]
ROWS = {
    "project": ACQUISITIONS["project"],
    "fastmri": FASTMRI,
    "fastmri-4coils": replace(FASTMRI, coils=4),
    "fastmri-16coils": replace(FASTMRI, coils=16),
    "fastmri-noiseless": replace(FASTMRI, noise_peak=None),
    "fastmri-40dB": replace(FASTMRI, noise_peak=None, snr_db=40.0),
    "fastmri-30dB": replace(FASTMRI, noise_peak=None, snr_db=30.0),
    "fastmri-bart": replace(FASTMRI, maps_backend="bart"),
    "loops-correlated": replace(FASTMRI, layout="loops", coil_radius=1.05, noise_correlation=0.4),
}
ACCELERATIONS = (4, 8, 10)
L1_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
PC_STEPS = 100  # the published PC sampler's 100 steps: 200 network evaluations, the demo sampler's budget
# The networks fine-tuned with a randomised acquisition (demo/README.md), with the demo configs' default sampler
ACQUISITION_WEIGHTS = {"vpsde-acq": "demo/vpsde_brain_acq_demo.pth", "hfssde-acq": "demo/hfssde_brain_acq_demo.pth"}
METHODS = ("zero_filled", "sense", "l1wavelet", "vpsde", "hfssde", "hfssde-pc", *ACQUISITION_WEIGHTS)
LABELS = {"zero_filled": "zero-filled", "sense": "CG-SENSE", "l1wavelet": "ℓ1-wavelet", "vpsde": "VP-SDE",
          "hfssde": "HFS-SDE", "hfssde-pc": "HFS-SDE PC", "vpsde-acq": "VP-SDE acq.", "hfssde-acq": "HFS-SDE acq."}


# --- anatomy -------------------------------------------------------------------------------------------------------

def make_heads(source: str, out: str) -> None:
    """Write `HEADS` from the nilearn wheel (MNI152 template) and the dipy wheel (coronal T1 slice) in `source`,
    `CONTRAST` from the dipy wheel, `MISMATCH`, and `COLIN` from a `ch2.nii.gz` in `source` or below it."""
    from data_prepare import generate_brain_demo as brain  # noqa: PLC0415
    from utils.augment import add_scalp  # noqa: PLC0415

    colin = sorted(glob.glob(os.path.join(source, "**", "ch2.nii.gz"), recursive=True))
    if not colin:
        raise SystemExit(f"no ch2.nii.gz in {source}: apt-get download mricron-data && dpkg-deb -x "
                         f"mricron-data_*.deb {source}/mricron")
    try:
        stack, spacing = load_stack(colin[0], None)
    except ValueError as err:
        raise SystemExit(f"{colin[0]}: {err}") from err
    if spacing != (1.0, 1.0) or not np.array_equal(stack, np.round(stack)) or stack.max() > 255:
        raise SystemExit(f"{colin[0]} is not the 1 mm, 8-bit Colin27 volume of mricron-data")
    colin_slices = stack[list(COLIN_SLICES)].astype(np.uint8)  # as stored: --heads fits them to SIZE
    with tempfile.TemporaryDirectory(prefix="hfs_heads_") as tmp:
        slices, pixel_mm = brain.load_template(brain.find_template(source, tmp), SIZE)
    sets = {}
    for index, name in enumerate(("test", "val")):  # the brain set's own seeds: the same skull and scalp
        rng = np.random.default_rng([0, index, 1])
        stack = np.stack([add_scalp(m, rng, pixel_mm) for m in slices[list(brain.split()[name])]])
        sets[name] = stack / stack.max()
    wheels = glob.glob(os.path.join(source, "dipy-*.whl"))
    if not wheels:
        raise SystemExit(f"no dipy wheel in {source}: pip download dipy --no-deps --only-binary=:all: -d {source}")
    with zipfile.ZipFile(wheels[0]) as wheel, tempfile.TemporaryDirectory(prefix="hfs_heads_") as tmp:
        coronal = np.abs(np.load(io.BytesIO(wheel.read("dipy/data/files/t1_coronal_slice.npy"))))
        contrast = []
        for name, picked in OTHER_CONTRAST.items():
            stack, spacing = load_stack(wheel.extract(f"dipy/data/files/{name}", tmp), None)
            contrast += [fit_to_size(s / s.max(), spacing, SIZE, "fit") for s in np.abs(stack[list(picked)])]
    save(CONTRAST, np.save, np.stack(contrast).astype(np.float32))
    save(COLIN, np.save, colin_slices)
    coronal = fit_to_size(coronal / coronal.max(), (1.0, 1.0), SIZE, "fit")
    # the unseen head first (--max-slices keeps it); the lesioned slice drawn on a test slice as stored
    test = np.concatenate([coronal[None], sets["test"]]).astype(np.float16)
    save(MISMATCH, np.save, mismatch_images(test[2].astype(np.float64)).astype(np.float32))
    names = ["dipy_coronal_t1"] + [f"mni152_z{z}" for z in brain.split()["test"]]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    save(out, np.savez_compressed, val=sets["val"].astype(np.float16), test=test, test_names=np.array(names),
         val_names=np.array([f"mni152_z{z}" for z in brain.split()["val"]]))
    print(f"wrote {out}: {len(sets['val'])} validation and {len(test)} test slices; {CONTRAST}: {len(contrast)} "
          f"slices of another contrast (add them with --heads {CONTRAST}); {MISMATCH}: {len(MISMATCH_IMAGES) + 1} "
          f"images unlike a brain; {COLIN}: {len(COLIN_SLICES)} slices of a second unseen head")


def save(path: str, writer, *arrays, **named) -> None:
    """`writer` (np.save, np.savez_compressed) into `path` whole or not at all (utils/atomic.atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer(f, *arrays, **named)


def mismatch_images(brain: np.ndarray) -> np.ndarray:
    """`MISMATCH_IMAGES` as `[N, SIZE, SIZE]` magnitudes in [0, 1] (colour ones by their green channel), then
    `brain` with `LESIONS` drawn in."""
    import skimage.data  # noqa: PLC0415

    images = []
    for name in MISMATCH_IMAGES:
        image = getattr(skimage.data, name)(**({"rng": 0} if name == "binary_blobs" else {})).astype(np.float64)
        image = image[..., 1] if image.ndim == 3 else image
        images.append(fit_to_size(image / image.max(), (1.0, 1.0), SIZE, "fit"))
    rows, cols = np.mgrid[:SIZE, :SIZE]
    lesioned = brain.astype(np.float64).copy()
    for row, col, radius, value in LESIONS:
        lesioned[(rows - row) ** 2 + (cols - col) ** 2 < radius ** 2] = value
    return np.stack(images + [lesioned])


def load_heads(extra: list[str], only: bool = False, slices: str = "all") -> dict[str, np.ndarray]:
    """The validation and test images `[N, SIZE, SIZE]`: `HEADS`' and, as more test images, the `slices`
    (`--head-slices`: all, start:stop[:step] or i,j,k) of each file of `extra` (`--heads`); with `only`
    (`--only-heads`) the test images are those of `extra` alone."""
    if only and not extra:
        raise SystemExit("--only-heads tests on the --heads images alone: give them with --heads <files>")
    if not os.path.exists(HEADS):
        raise SystemExit(f"{HEADS} is missing; make it with: python bench/bench_shift.py --make-heads --source "
                         f"<folder with the nilearn and dipy wheels>")
    heads = np.load(HEADS)
    test = [] if only else [heads["test"].astype(np.float64)]
    for path in extra:
        try:
            stack, spacing = load_stack(path, None)
            stack = stack[select_slices(slices, len(stack))]
        except (OSError, ValueError) as err:
            raise SystemExit(f"--heads {path}: {err}") from err
        stack = np.nan_to_num(np.abs(stack), nan=0.0, posinf=0.0)
        empty = [i for i, s in enumerate(stack) if not s.max() > 0]
        if empty:
            raise SystemExit(f"--heads {path}: slice(s) {empty} hold no signal (zero or not a number everywhere); "
                             f"give images with an object in them")
        test.append(np.stack([fit_to_size(s / s.max(), spacing, SIZE, "fit") for s in stack]))
    return {"val": heads["val"].astype(np.float64), "test": np.concatenate(test)}


# --- data per row --------------------------------------------------------------------------------------------------

def row_data(out: str, row: str, heads: dict[str, np.ndarray]) -> dict[str, str]:
    """Simulate (once) the row's validation and test volumes; returns their k-space folders."""
    folders = {}
    for index, split in enumerate(("val", "test")):
        folder = os.path.join(out, "data", row, split)
        path = os.path.join(folder, f"{row}_{split}.h5")
        digest = hashlib.sha256(np.ascontiguousarray(heads[split], np.float64).tobytes()).hexdigest()
        if os.path.exists(path):
            with h5py.File(path, "r") as f:
                made_from = f.attrs.get("heads_sha256", digest if len(f["kspace"]) == len(heads[split]) else "")
            if made_from != digest:
                raise SystemExit(f"{path} was simulated from other {split} images (another --heads); give another "
                                 f"--out, or delete {os.path.join(out, 'data', row)} and the row's results")
        else:
            rng = np.random.default_rng([2026, list(ROWS).index(row), index])
            kspace, maps = simulate_volume(heads[split], rng, ROWS[row])
            attrs = {"acquisition": repr(ROWS[row]), "heads_sha256": digest}
            write_maps_file(os.path.join(folder + "_maps", f"{row}_{split}.h5"), maps, attrs=attrs)
            write_kspace_file(path, kspace, acquisition="SHIFT_BENCH", patient_id=row, recon_size=SIZE, attrs=attrs)
        folders[split] = folder
    return folders


def noise_figures(folder: str, row: str, acc: int) -> tuple[float, float]:
    """`(noise×, σ̂/σ)` of a row's test volume at one acceleration (module docstring), means over slices."""
    with h5py.File(os.path.join(folder, f"{row}_test.h5")) as f:
        kspace = torch.from_numpy(f["kspace"][()])
    with h5py.File(os.path.join(folder + "_maps", f"{row}_test.h5")) as f:
        maps = center_crop(torch.from_numpy(f["s_maps"][()]), (SIZE, SIZE))
    mask = torch.from_numpy(make_mask("uniform", SIZE, acc=acc, acs=ACS).astype(np.float32))
    gen = torch.Generator().manual_seed(acc)
    noise = torch.complex(torch.randn(maps.shape, generator=gen), torch.randn(maps.shape, generator=gen))
    inside = maps.abs().square().sum(1, keepdim=True) > 0
    full = sense_adjoint(noise, maps, torch.ones(()))
    under = conjugate_gradient(lambda v: sense_normal(v, maps, mask), sense_adjoint(noise, maps, mask), 30)
    amplification = (under.abs().square()[inside].mean() / full.abs().square()[inside].mean()).sqrt()
    clean_kspace = crop_kspace(kspace, (SIZE, SIZE))
    estimate = noise_sigma(clean_kspace * mask, maps, mask)
    acquisition = ROWS[row]
    truth = true_sigma(row) if acquisition.snr_db is not None or acquisition.noise_peak is not None else None
    ratio = float("nan") if truth is None else float(estimate.mean() / truth)
    return float(amplification), ratio


def true_sigma(row: str) -> float:
    """The complex noise std the row's test volume was simulated with (same seed, noiseless copy subtracted)."""
    heads = load_heads([])
    rng = lambda: np.random.default_rng([2026, list(ROWS).index(row), 1])  # noqa: E731
    noisy, _ = simulate_volume(heads["test"], rng(), replace(ROWS[row], maps="true"))
    clean, _ = simulate_volume(heads["test"], rng(), replace(ROWS[row], maps="true", snr_db=None, noise_peak=None))
    noise = crop_kspace(torch.from_numpy(noisy - clean), (SIZE, SIZE))
    return float(noise.abs().square().mean().sqrt())


# --- methods -------------------------------------------------------------------------------------------------------

def method_config(method: str, row: str, folders: dict[str, str], split: str, acc: int, out: str, l1_lambda=None,
                  max_slices: int = 0):
    config = (vp_brain if method.startswith("vpsde") else hfs_brain)()
    s = config.sampling
    s.checkpoint = os.path.join(REPOSITORY, ACQUISITION_WEIGHTS.get(method, s.checkpoint))  # from any folder
    if method in BASELINES.names():
        s.method, s.num_samples = method, 1
    if method == "hfssde-pc":
        s.method, s.num_samples, s.N = "pc", 1, PC_STEPS
    if l1_lambda is not None:
        s.l1_lambda = l1_lambda
    s.acc, s.show_progress, s.datashift, s.max_slices = acc, False, f"shift_{split}", max_slices
    config.data.test_roots[s.datashift] = folders[split]
    config.data.test_maps_roots[s.datashift] = folders[split] + "_maps"
    tag = method if l1_lambda is None else f"{method}_lambda{l1_lambda:g}"
    s.output_dir = os.path.join(out, row, f"acc{acc}", split, tag)
    return config


def tune_l1(row: str, folders: dict[str, str], acc: int, out: str) -> float:
    """The PSNR-best ℓ1-wavelet λ of `L1_GRID` on the row's validation slices."""
    scores = {lam: reconstruct(method_config("l1wavelet", row, folders, "val", acc, out, lam), out)["psnr"]
              for lam in L1_GRID}
    return max(scores, key=scores.get)


def per_slice_psnr(summary_folder: str) -> np.ndarray:
    import csv  # noqa: PLC0415

    with open(os.path.join(summary_folder, "metrics.csv")) as f:
        return np.array([float(r["psnr"]) for r in csv.DictReader(f)])


def run_row(row: str, accelerations, methods, heads, out: str, max_slices: int = 0) -> list[dict]:
    folders = row_data(out, row, heads)
    results = []
    for acc in accelerations:
        entry = {"row": row, "acc": acc}
        entry["noise_amplification"], entry["sigma_ratio"] = noise_figures(folders["test"], row, acc)
        for method in methods:
            lam = tune_l1(row, folders, acc, out) if method == "l1wavelet" else None
            config = method_config(method, row, folders, "test", acc, out, lam, max_slices)
            summary = reconstruct(config, out)
            entry[method] = {"psnr": summary["psnr"], "ssim": summary["ssim"], "folder": config.sampling.output_dir,
                             "seconds_per_slice": summary["seconds_per_slice"], "n_slices": summary["n_slices"]}
            if lam is not None:
                entry[method]["lambda"] = lam
        results.append(with_margin(entry))
        print(format_table([entry], methods, header=False), flush=True)
    return results


def with_margin(entry: dict) -> dict:
    """`entry` plus `worst_margin`: the smallest per-slice PSNR margin of HFS-SDE over ℓ1-wavelet, if it has both."""
    if "hfssde" in entry and "l1wavelet" in entry:
        hfs, l1 = per_slice_psnr(entry["hfssde"]["folder"]), per_slice_psnr(entry["l1wavelet"]["folder"])
        n = min(len(hfs), len(l1))  # the same slices in the same order; a run with more may have been merged
        margin = hfs[:n] - l1[:n]
        entry["worst_margin"] = float(margin.min())
    return entry


def write_report(folder: str, table: str, entries: list[dict]) -> None:
    """`table.md` and `results.json` in `folder`, each written whole (a kill leaves the previous file)."""
    os.makedirs(folder, exist_ok=True)
    with atomic_path(os.path.join(folder, "table.md")) as tmp, open(tmp, "w") as f:
        f.write(table + "\n")
    write_json(os.path.join(folder, "results.json"), entries)


def run_entries(out: str, compute):
    """`compute()`, with another run writing into the same `--out` (a locked reconstruction folder), or a folder
    there that holds results of another setting (another version's, other options), turned into a one-line exit."""
    try:
        return compute()
    except (FolderBusy, OtherSetting) as err:
        raise SystemExit(f"--out {out}: {err}") from err


def merge_results(path: str, entries: list[dict]) -> list[dict]:
    """The entries of earlier runs in `path` (results.json) with this run's replacing those of the same row and
    acceleration (methods of the same entry merged), in benchmark order: the table grows across partial runs."""
    merged = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                merged = {(e["row"], e["acc"]): e for e in json.load(f)}
        except (ValueError, TypeError, KeyError) as err:
            raise SystemExit(f"{path} is damaged ({type(err).__name__}: {err}); delete it and rerun the rows of the "
                             f"table (their finished slices are reused)") from err
    for e in entries:
        merged[(e["row"], e["acc"])] = with_margin({**merged.get((e["row"], e["acc"]), {}), **e})
    order = {row: i for i, row in enumerate(ROWS)}
    return sorted(merged.values(), key=lambda e: (order.get(e["row"], len(order)), e["acc"]))


def format_table(entries: list[dict], methods, header: bool = True) -> str:
    lines = []
    if header:
        cols = " | ".join(LABELS[m] for m in methods)
        lines += [f"| row | acc | noise× | σ̂/σ | {cols} | HFS − ℓ1 (mean / worst slice) |",
                  "|" + "---|" * (len(methods) + 5)]
    for e in entries:
        cells = [f"{e[m]['psnr']:.2f} / {e[m]['ssim']:.3f}{slice_note(e, m)}" if m in e else "–" for m in methods]
        margin = (f"{e['hfssde']['psnr'] - e['l1wavelet']['psnr']:+.2f} / {e['worst_margin']:+.2f}"
                  if "worst_margin" in e else "–")
        lines.append(f"| {e['row']} | {e['acc']}× | {e['noise_amplification']:.1f} | {e['sigma_ratio']:.2f} | "
                     + " | ".join(cells) + f" | {margin} |")
    return "\n".join(lines)


def slice_note(entry: dict, method: str) -> str:
    """` (n slices)` after a cell whose mean is over fewer or more test slices than the row's most common count (runs
    with other `--max-slices` merged into one row), else ''."""
    counts = [entry[m]["n_slices"] for m in METHODS if entry.get(m, {}).get("n_slices") is not None]
    n = entry[method].get("n_slices")
    if n is None:  # an entry written before slice counts were kept
        return ""
    usual = max(set(counts), key=counts.count)
    return "" if n == usual else f" ({n} slice{'s' if n != 1 else ''})"


def save_figure(entries: list[dict], path: str) -> bool:
    """The mean and worst HFS-SDE − ℓ1-wavelet margin per row and acceleration at `path` (written whole); False,
    and nothing written, when no entry has both methods."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    entries = [e for e in entries if "worst_margin" in e]
    if not entries:
        return False
    rows = list(dict.fromkeys(e["row"] for e in entries))
    accs = sorted({e["acc"] for e in entries})
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(rows), 3.2))
    width = 0.8 / len(accs)
    for k, acc in enumerate(accs):
        xs, means, worst = [], [], []
        for i, row in enumerate(rows):
            match = [e for e in entries if e["row"] == row and e["acc"] == acc]
            if match:
                xs.append(i + (k - (len(accs) - 1) / 2) * width)
                means.append(match[0]["hfssde"]["psnr"] - match[0]["l1wavelet"]["psnr"])
                worst.append(match[0]["worst_margin"])
        ax.bar(xs, means, width, label=f"{acc}× (mean)")
        ax.scatter(xs, worst, color="k", marker="_", s=80, zorder=3, label="worst slice" if k == 0 else None)
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(1, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(rows)), rows, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("HFS-SDE − ℓ1-wavelet PSNR (dB)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    parser.add_argument("--acc", nargs="+", type=int, default=list(ACCELERATIONS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--heads", nargs="*", default=[], help="more test images (NIfTI, PNG/TIFF, .npy)")
    parser.add_argument("--head-slices", default="all", help=HEAD_SLICES_HELP)
    parser.add_argument("--only-heads", action="store_true", help=ONLY_HEADS_HELP)
    parser.add_argument("--max-slices", type=int, default=0, help="the first K test slices only (0: all)")
    parser.add_argument("--out", default="results/bench_shift")
    parser.add_argument("--make-heads", action="store_true", help=f"write {HEADS} from --source and stop")
    parser.add_argument("--source", default=None, help="folder with the nilearn and dipy wheels and the unpacked "
                        "mricron-data package (--make-heads)")
    args = parser.parse_args(argv)
    if args.make_heads:
        if not args.source:
            parser.error("--make-heads needs --source <folder with the nilearn and dipy wheels and the unpacked "
                         "mricron-data package>")
        try:
            make_heads(args.source, HEADS)
        except (OSError, ValueError) as err:  # a damaged wheel or volume; nothing was written (make_heads)
            parser.error(f"--make-heads --source {args.source}: {err}")
        return 0
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    from data_prepare.espirit import bart_binary  # noqa: PLC0415

    rows = [r for r in args.rows if ROWS[r].maps_backend != "bart" or bart_binary()]
    for skipped in sorted(set(args.rows) - set(rows)):
        print(f"row {skipped} skipped: the bart binary is not installed (apt-get install bart)")
    heads = load_heads(args.heads, args.only_heads, args.head_slices)
    print(format_table([], args.methods))
    entries = run_entries(args.out, lambda: [e for row in rows for e in run_row(row, args.acc, args.methods, heads,
                                                                                 args.out, args.max_slices)])
    entries = merge_results(os.path.join(args.out, "results.json"), entries)
    methods = [m for m in METHODS if any(m in e for e in entries)]
    table = format_table(entries, methods)
    write_report(args.out, table, entries)
    figure = " and shift_margin.png" if save_figure(entries, os.path.join(args.out, "shift_margin.png")) else ""
    print(f"\n{table}\ntable.md, results.json{figure} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
