"""Output files of a reconstruction folder (listed in `runners/reconstruct.py`): per-slice `.mat` and `.png`,
`metrics.csv`, the `.h5` volumes with `volumes.csv`, and `setting.json`, which keeps one setting per folder."""
from __future__ import annotations

import csv
import json
import os

import h5py
import numpy as np
import scipy.io

from utils import metrics
from utils.figures import save_panel

FIELDS = ["fname", "slice", "nmse", "psnr", "ssim", "nmse_published", "psnr_published", "ssim_published",
          "zf_nmse", "zf_psnr", "zf_ssim", "seconds", "nfe"]


def is_done(out: str, fname: str, index: int) -> bool:
    """Whether slice `index` of `fname` is already reconstructed in `out` (its `.mat` file exists)."""
    return os.path.exists(os.path.join(out, f"recon_{fname}_{index}.mat"))


def write_slice(out, fname, index, recon, zero_filled, truth, row, method, support):
    """`recon_<file>_<slice>.mat` (complex `[H, W]` images) and the `<file>_<slice>.png` panel with `row`'s metrics;
    `support` (`[H, W]` or 1) masks the reconstruction in the panel."""
    scipy.io.savemat(os.path.join(out, f"recon_{fname}_{index}.mat"),
                     {"recon": recon, "zero_filled": zero_filled, "ground_truth": truth}, do_compression=True)
    zf = {"psnr": row["zf_psnr"], "ssim": row["zf_ssim"]}
    save_panel(os.path.join(out, f"{fname}_{index}.png"), np.abs(zero_filled), np.abs(recon) * support,
               np.abs(truth), zf, row, method)


def append_row(path: str, row: dict) -> None:
    """Append one slice's metrics to the CSV at `path` (header on a new file)."""
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_rows(path: str) -> list[dict]:
    """The rows of `metrics.csv` (numbers as floats); empty when the file does not exist."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{k: (v if k == "fname" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def write_volumes(out: str, rows: list[dict]) -> list[dict]:
    """Assemble `<file>.h5` volumes from the slice files and compute fastMRI per-volume metrics."""
    volumes = []
    for fname in sorted({r["fname"] for r in rows}):
        indices = sorted(int(r["slice"]) for r in rows if r["fname"] == fname)
        mats = [scipy.io.loadmat(os.path.join(out, f"recon_{fname}_{i}.mat")) for i in indices]
        recon = np.stack([np.abs(m["recon"]) for m in mats]).astype(np.float32)
        truth = np.stack([np.abs(m["ground_truth"]) for m in mats])
        with h5py.File(os.path.join(out, f"{fname}.h5"), "w") as f:
            f.create_dataset("reconstruction", data=recon)
            f.create_dataset("slices", data=np.asarray(indices))
        volumes.append({"fname": fname, "n_slices": len(indices), **metrics.evaluate_volume(truth, recon)})
    if volumes:
        with open(os.path.join(out, "volumes.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(volumes[0]))
            writer.writeheader()
            writer.writerows(volumes)
    return volumes


# Keys that do not change a slice's reconstruction: a rerun may differ in them and still resume the folder.
_FREE_KEYS = {"batch_size", "max_slices", "show_progress", "output_dir", "bf16", "compile"}


def _setting(config) -> dict:
    setting = json.loads(config.to_json_best_effort())
    setting["sampling"] = {k: v for k, v in setting["sampling"].items() if k not in _FREE_KEYS}
    setting.pop("device", None)
    return setting


def _flat(tree: dict, prefix: str = "") -> dict:
    """`{"group.key": value}` of a nested dict."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def claim_output_folder(config, out: str) -> None:
    """Create `out`, or check that the results already in it come from the same setting (`setting.json`)."""
    path = os.path.join(out, "setting.json")
    current = json.loads(json.dumps(_setting(config)))
    if not os.path.exists(path):
        os.makedirs(out, exist_ok=True)
        with open(path, "w") as f:
            json.dump(current, f, indent=1)
        return
    with open(path) as f:
        saved, now = _flat(json.load(f)), _flat(current)
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if changed:
        raise ValueError(f"{out} holds reconstructions of another setting (differs in {', '.join(changed)}); give a "
                         f"new sampling.output_dir or delete the folder to redo it")
