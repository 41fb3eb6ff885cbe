"""Output files of a reconstruction folder (listed in `runners/reconstruct.py`): per-slice `.mat` and `.png`,
`metrics.csv`, the `.h5` volumes with `volumes.csv`, `summary.json`, and `setting.json`, which keeps one result
identity (runners/identity.py) per folder.

Every file is written whole to a temporary file beside it and renamed over it (`utils/atomic.atomic_path`), so
a killed process leaves the previous version or the new one, never a part. A slice is finished when its
`metrics.csv` row has every column and its `.mat` file reads back (`SliceRecords.is_done`); the row is written
last, so a slice killed half-way is reconstructed again. Rows are kept one per `(file, slice)`, and the volumes
and summaries are built from them.

Under `torchrun` rank 0 owns the folder (its lock and `metrics.csv`); rank r > 0 writes its own slices' files and
its rows to `metrics.rank<r>.csv`, which rank 0 takes into `metrics.csv` and deletes (`SliceRecords.absorb_ranks`)
when all ranks have finished, and at the start of any later run into the folder (rows of a killed job are kept).
"""
from __future__ import annotations

import csv
import fnmatch
import glob
import io
import json
import logging
import os

import h5py
import numpy as np
import scipy.io

from runners import uncertainty
from runners.identity import Identity, differences
from utils import metrics
from utils.atomic import atomic_path, read_csv_rows, write_json
from utils.figures import save_panel

FIELDS = ["fname", "slice", "nmse", "psnr", "ssim", "nmse_published", "psnr_published", "ssim_published",
          "zf_nmse", "zf_psnr", "zf_ssim", "residual", "zf_residual", "flagged", "seconds", "nfe"]
# Columns of slices reconstructed with several posterior samples (utils/metrics.calibration); empty otherwise.
# With K > 1 posterior samples: the std map's calibration columns, and the metrics of sample 0 alone (the single
# reconstruction with the slice's seed, sampling.posterior_seeds), which show what the mean of K adds.
POSTERIOR_FIELDS = ("std_rank_corr", "coverage_2std", "sample_nmse", "sample_psnr", "sample_ssim")
# Columns that a slice has where they apply: the posterior ones, then the error map's and warnings'.
OPTIONAL_FIELDS = POSTERIOR_FIELDS + uncertainty.FIELDS
_INTEGERS = ("slice", "flagged", "nfe", "warn")
RANK_ROWS = "metrics.rank{}.csv"  # rows of rank r > 0 of a multi-process reconstruction
_MAT_KEYS = ("recon", "zero_filled", "ground_truth")


def mat_path(out: str, fname: str, index: int) -> str:
    return os.path.join(out, f"recon_{fname}_{index}.mat")


def write_slice(out: str, fname: str, index: int, recon: np.ndarray, zero_filled: np.ndarray, truth: np.ndarray,
                row: dict, title: str, arrays: dict[str, np.ndarray] | None = None) -> None:
    """`recon_<file>_<slice>.mat` (complex `[H, W]` images and the `arrays` there are: `std`, the pixelwise std of
    the posterior samples' magnitudes, the complex `sample` 0 `[H, W]` and all `samples` `[K, H, W]`, the error map
    `error_std`, its noise part
    `noise_std` and the warning's `baseline` image, runners/uncertainty.py) and the `<file>_<slice>.png` panel of the
    magnitudes scored in `row` (plus the error map, or the samples' std), the reconstruction titled `title`."""
    arrays = arrays or {}
    with atomic_path(mat_path(out, fname, index)) as tmp, open(tmp, "wb") as f:
        scipy.io.savemat(f, {"recon": recon, "zero_filled": zero_filled, "ground_truth": truth, **arrays},
                         do_compression=True)
    zf = {"psnr": row["zf_psnr"], "ssim": row["zf_ssim"]}
    save_panel(os.path.join(out, f"{fname}_{index}.png"), np.abs(zero_filled), np.abs(recon), np.abs(truth), zf, row,
               title, arrays.get("error_std", arrays.get("std")))


def _read_mat(path: str) -> dict | None:
    """The images of a slice's `.mat` file; None when it is missing, unreadable or incomplete."""
    try:
        data = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises many types for a damaged file (MatReadError, OSError, IndexError, ...)
        logging.debug("cannot read %s: %s", path, err)
        return None
    return data if all(key in data for key in _MAT_KEYS) else None


def _parse(key: str, value: str | None):
    if key == "fname":
        return value
    return int(float(value)) if key in _INTEGERS else float(value)


def _parse_row(row: dict) -> dict | None:
    """A `metrics.csv` row with its numbers parsed; None when a column of `FIELDS` is empty or does not parse."""
    if any(row.get(k) in (None, "") for k in FIELDS):
        return None
    try:
        return {k: _parse(k, row[k]) for k in FIELDS + list(OPTIONAL_FIELDS) if row.get(k) not in (None, "")}
    except ValueError:
        return None


def read_rows(path: str) -> list[dict]:
    """The complete rows of `metrics.csv` (every column of `FIELDS`, numbers parsed); empty when there is no file.
    Damaged rows are dropped with a warning (their slices are reconstructed again)."""
    return read_csv_rows(path, _parse_row, "those slices are reconstructed again")


class SliceRecords:
    """The finished slices of a reconstruction folder: the rows of `metrics.csv` (or of another row file `name`, a
    rank's `metrics.rank<r>.csv`), one per `(file, slice)`."""

    def __init__(self, out: str, name: str = "metrics.csv"):
        self.out, self.path = out, os.path.join(out, name)
        self._rows = {(r["fname"], r["slice"]): r for r in read_rows(self.path)}
        self._checked: set[tuple[str, int]] = set()

    def is_done(self, fname: str, index: int) -> bool:
        """Whether the slice has a complete row and a readable `.mat` file; a row whose file is broken is dropped
        (with a warning) so that the slice is reconstructed again."""
        key = (fname, int(index))
        if key not in self._rows:
            return False
        if key not in self._checked:
            if _read_mat(mat_path(self.out, *key)) is None:
                logging.warning("%s is missing or unreadable (an interrupted run?): slice %d of %s is reconstructed "
                                "again", mat_path(self.out, *key), key[1], fname)
                del self._rows[key]
                return False
            self._checked.add(key)
        return True

    def add(self, row: dict) -> None:
        """Record a finished slice (replacing an earlier row of the same slice) and rewrite `metrics.csv`."""
        key = (row["fname"], int(row["slice"]))
        self._rows[key] = row
        self._checked.add(key)
        self._write()

    def absorb_ranks(self) -> None:
        """Take the rows of the rank files (`metrics.rank<r>.csv`) in, replacing older rows of the same slices (each
        `.mat` file is checked again), rewrite `metrics.csv`, then delete the rank files; a kill in between leaves
        rows that are taken in again next time."""
        paths = sorted(glob.glob(os.path.join(self.out, RANK_ROWS.format("*"))))
        for path in paths:
            for row in read_rows(path):
                key = (row["fname"], row["slice"])
                self._rows[key] = row
                self._checked.discard(key)
        if paths:
            self._write()
            for path in paths:
                os.unlink(path)

    def finished(self) -> list[dict]:
        """Every finished slice's row in `(file, slice)` order, each `.mat` file checked; `metrics.csv` is rewritten
        with exactly these rows (dropping duplicates, incomplete rows and rows whose file cannot be read)."""
        done = [self._rows[key] for key in sorted(self._rows) if self.is_done(*key)]
        self._write()
        return done

    def _write(self) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS + list(OPTIONAL_FIELDS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self._rows[key] for key in sorted(self._rows))


def _write_h5(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` as the datasets of an `.h5` file, atomically. The file is built in memory and written with
    Python's I/O, so a refused write is a `WriteError` naming `path` (HDF5 may report it as a RuntimeError)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())


def write_volumes(out: str, rows: list[dict]) -> list[dict]:
    """Assemble `<file>.h5` volumes (`reconstruction` `[slices, H, W]` magnitudes, with posterior samples their `std`,
    and the `slices` indices) from
    the finished slices `rows` (one per slice) and compute fastMRI per-volume metrics (`volumes.csv`)."""
    volumes = []
    for fname in sorted({r["fname"] for r in rows}):
        indices = sorted({int(r["slice"]) for r in rows if r["fname"] == fname})
        mats = [scipy.io.loadmat(mat_path(out, fname, i)) for i in indices]
        recon = np.stack([np.abs(m["recon"]) for m in mats]).astype(np.float32)
        truth = np.stack([np.abs(m["ground_truth"]) for m in mats])
        arrays = {"reconstruction": recon, "slices": np.asarray(indices)}
        if all("std" in m for m in mats):
            arrays["std"] = np.stack([m["std"] for m in mats]).astype(np.float32)
        _write_h5(os.path.join(out, f"{fname}.h5"), arrays)
        volumes.append({"fname": fname, "n_slices": len(indices), **metrics.evaluate_volume(truth, recon)})
    if volumes:
        with atomic_path(os.path.join(out, "volumes.csv")) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(volumes[0]))
            writer.writeheader()
            writer.writerows(volumes)
    return volumes


def _own_names(keys) -> set[str]:
    """The names of the files a reconstruction of the slices `keys` (`(file, slice)` pairs) writes into its folder."""
    names = {"metrics.csv", "volumes.csv", "summary.json", "reliability.png"}
    for fname, index in keys:
        names.update({os.path.basename(mat_path("", fname, index)), f"{fname}_{index}.png", f"{fname}.h5"})
    return names


class OtherSetting(ValueError):
    """An output folder that holds results this run cannot add to (another setting, not this tool's, or a damaged
    setting.json); the message names the folder and what to do."""


def claim_output_folder(identity: Identity, out: str, keys) -> None:
    """Record the result identity in `out` (`setting.json`: its name and fields), or check that the results already
    there have the same one (runners/identity.py). A folder without `setting.json` is not ours: a file in it with
    the name of one we would write for the slices `keys` (or a rank's rows) stops the run, so no file of the user's
    is ever replaced."""
    path = os.path.join(out, "setting.json")
    current = {"identity": identity.name, "fields": identity.fields}
    if not os.path.exists(path):
        names = _own_names(keys)
        foreign = sorted(n for n in os.listdir(out) if n in names or fnmatch.fnmatch(n, RANK_ROWS.format("*")))
        if foreign:
            raise OtherSetting(f"{out} was not made by this tool (no setting.json) and holds {', '.join(foreign[:3])}"
                               f"{' …' if len(foreign) > 3 else ''}, which a reconstruction would replace; give a "
                               f"new sampling.output_dir")
        write_json(path, current)
        return
    try:
        with open(path) as f:
            saved = json.load(f)
        changed = differences(saved.get("fields", saved), identity.fields)
    except (ValueError, AttributeError):  # not JSON, or not the object this tool writes
        raise OtherSetting(f"{path} is damaged (not the setting.json this tool writes), so the results in {out} "
                           f"cannot be matched to this run; give a new sampling.output_dir or delete the folder to "
                           f"redo it") from None
    if changed:
        raise OtherSetting(f"{out} holds reconstructions of another setting (differs in {', '.join(changed)}); give "
                           f"a new sampling.output_dir or delete the folder to redo it")
