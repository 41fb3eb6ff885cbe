"""`main.py --mode tune`: search the sampler settings for the best PSNR (or SSIM) on validation slices.

    python main.py --mode tune --config configs/hfssde/brain_demo.py [--tune_metric ssim] [--tune_slices 2]

The validation slices are the first `--tune_slices` slices of `data.eval_root` (never the test set). The search
space of a method is `METHOD_AXES[sampling.method]`: for the PC sampler log-grids for `sampling.snr`
(`snr_accelerated` when `sampling.accelerated_sampling`), `mse` and `corrector_mse`, and the choices of the
clean-image options `support_mask`, `final_dc` and `denoise` (the ODE sampler: those of them its settings have);
for DDIM, η, the data-consistency λ and CG steps and the support mask; for a baseline ℓ1-wavelet's λ or CG-SENSE's
iterations. Each axis is a field of the method's settings class (sampling.py, baselines.py), and a trial is the
method's settings with those fields replaced. The search starts at the config's values (snapped to the grids), runs
coordinate descent on the coarse grids (every other grid value), then refines on the full grids among the
neighbours of the best point, until no trial improves.

Everything goes to `<workdir>/tune/<identity>_<metric>/`, `<identity>` the result identity (runners/identity.py) of
the method on the validation slices without the searched keys (so another checkpoint, data, slices or any fixed
setting gives another folder): `trials.csv` (every trial: its settings, PSNR, SSIM, seconds), `trials.png`, and
`best.json`. A rerun reads `trials.csv` and never redoes a finished trial. `best.json` is applied by one override,
`--config.sampling.tuned=<workdir>/tune/<identity>_<metric>/best.json` (`reconstructor.apply_tuned`).
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import logging
import math
import os
import sys
import time
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

import datasets
from runners import build, folders
from runners.first_use import prepare_data
from runners.reconstructor import Reconstructor, apply_tuned, input_folders, slice_seed
from utils import metrics
from utils.atomic import atomic_path, read_csv_rows, write_json
from utils.figures import save_trials
from utils.mri import sense_adjoint

METRICS = ("psnr", "ssim")


def _log_grid(low: float, high: float, per_decade: int) -> tuple[float, ...]:
    """Values `low · 10^(k / per_decade)` up to `high`, rounded to 3 significant digits."""
    count = round(math.log10(high / low) * per_decade) + 1
    return tuple(float(f"{low * 10 ** (k / per_decade):.3g}") for k in range(count))


# (field of the method's settings = key of config.sampling, grid, is the grid ordered on a log scale)
AXES: tuple[tuple[str, tuple, bool], ...] = (
    ("snr", _log_grid(0.02, 0.64, 6), True),
    ("mse", _log_grid(0.1, 10.0, 4), True),
    ("corrector_mse", _log_grid(0.01, 10.0, 4), True),
    ("support_mask", (False, True), False),
    ("final_dc", ("none", "replace", "cg"), False),
    ("denoise", (False, True), False),
)
DDIM_AXES: tuple[tuple[str, tuple, bool], ...] = (
    ("eta", (0.0, 0.25, 0.5, 0.7, 0.85, 1.0), True),
    ("dc_lambda", _log_grid(1e-3, 1.0, 3), True),
    ("dc_iters", (2, 5, 10, 20), True),
    ("support_mask", (False, True), False),
)
METHOD_AXES = {
    "pc": AXES, "ode": AXES, "ddim": DDIM_AXES,
    "l1wavelet": (("l1_lambda", _log_grid(1e-5, 1e-1, 3), True),),
    "sense": (("cg_iters", (3, 5, 8, 12, 20, 30, 50), True),),
}


def snr_key(config) -> str:
    """The `sampling.*` key behind the settings field `snr`."""
    return "snr_accelerated" if config.sampling.accelerated_sampling else "snr"


def _snap(value, grid: tuple) -> int:
    """Index of the grid value nearest to `value` (on a log scale for positive numbers)."""
    if value in grid:
        return grid.index(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return int(np.argmin([abs(math.log(value / g)) for g in grid]))
    return 0


def coordinate_search(objective: Callable[[tuple], float], axes: list[tuple], start: tuple[int, ...],
                      coarse_step: int = 2) -> tuple[tuple[int, ...], float]:
    """Maximise `objective(indices)` over the grid `axes` (lists of values; the search sees only indices).

    Coordinate descent on the coarse grid (every `coarse_step`-th index of the ordered axes, keeping the start),
    then on the full grid among each axis's neighbours of the best point, each until a sweep changes nothing.
    `objective` should cache: points are revisited. Returns `(best indices, best value)`.
    """
    best = tuple(start)
    best_value = objective(best)

    def sweep(candidates: Callable[[int, int], list[int]]) -> bool:
        nonlocal best, best_value
        moved = False
        for axis in range(len(axes)):
            for index in candidates(axis, best[axis]):
                point = best[:axis] + (index,) + best[axis + 1:]
                value = objective(point)
                if value > best_value:
                    best, best_value, moved = point, value, True
        return moved

    def coarse(axis: int, current: int) -> list[int]:
        size, ordered = len(axes[axis][1]), axes[axis][2]
        if not ordered:
            return list(range(size))
        return [i for i in range(size) if (i - current) % coarse_step == 0]

    def fine(axis: int, current: int) -> list[int]:
        size = len(axes[axis][1])
        return [i for i in (current - 1, current + 1) if 0 <= i < size]

    while sweep(coarse):
        pass
    while sweep(fine):
        pass
    return best, best_value


def _complete(row: dict, keys: list[str]) -> bool:
    """Whether a `trials.csv` row has every setting, a number for every metric and no extra field."""
    if None in row or any(not row.get(k) for k in keys + list(METRICS)):
        return False
    try:
        [float(row[m]) for m in METRICS]
    except ValueError:
        return False
    return True


class _Trials:
    """The trial record `trials.csv`: loaded at start (rows that are not complete, such as a last row cut short by
    a full disk, dropped with a warning), rewritten atomically after every finished trial."""

    def __init__(self, path: str, keys: list[str]):
        self.path, self.keys = path, keys
        rows = read_csv_rows(path, lambda row: row if _complete(row, keys) else None, "those trials are run again")
        self.rows: dict[tuple, dict] = {tuple(row[k] for k in keys): row for row in rows}

    def get(self, values: tuple) -> dict | None:
        return self.rows.get(tuple(str(v) for v in values))

    def add(self, values: tuple, result: dict) -> None:
        row = {**dict(zip(self.keys, (str(v) for v in values))), **{k: f"{v:.6g}" for k, v in result.items()}}
        self.rows[tuple(row[k] for k in self.keys)] = row
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.keys + list(result))
            writer.writeheader()
            writer.writerows(self.rows.values())


def _validation_slices(config, count: int) -> dict:
    """The first `count` validation slices as one batch (k-space, maps, seeds) on the device, their `(file, slice)`
    keys and the volumes of the validation set."""
    dataset = datasets.make_dataset(config, "eval")
    batch = datasets.first_slices(dataset, count)
    keys = [(f, int(s)) for f, s in zip(batch["fname"], batch["slice"])]
    return {"kspace": batch["kspace"].to(config.device), "maps": batch["maps"].to(config.device),
            "seeds": [slice_seed(config.sampling.seed, f, s) for f, s in keys], "keys": keys,
            "volumes": dataset.volumes}


def search_axes(config) -> list[tuple[str, tuple, bool]]:
    """The searched `(settings field, grid, ordered)` axes of `sampling.method`: the axes of `METHOD_AXES` that are
    fields of the method's settings class."""
    method = config.sampling.method
    entry = build.METHODS.entry(method)
    fields = {f.name for f in dataclasses.fields(entry.settings)}
    axes = [axis for axis in METHOD_AXES.get(method, ()) if axis[0] in fields]
    if not axes:
        raise ValueError(f"sampling.method={method!r} has no settings to tune; choose one of "
                         f"{sorted(m for m in METHOD_AXES if m in build.METHODS)}")
    return axes


class Tuner:
    """One search: the validation slices, the reconstructor and the trial record of `<workdir>/tune/<identity>`.

    `objective(point)` scores a grid point (indices into `axes`), from `trials.csv` when it was tried before;
    `search()` runs `coordinate_search` from the config's values and writes `best.json` and `trials.png`.
    """

    def __init__(self, config, workdir: str, metric: str = "psnr", num_slices: int = 2, axes=None):
        if metric not in METRICS:
            raise ValueError(f"unknown tune metric {metric!r}; choose one of {list(METRICS)}")
        config = copy.deepcopy(config)
        apply_tuned(config)
        config.sampling.show_progress = False
        self.metric, self.axes = metric, list(axes) if axes is not None else search_axes(config)
        self.fields = ["snr" if key == "snr_accelerated" else key for key, _, _ in self.axes]
        self.keys = [snr_key(config) if key == "snr" else key for key in self.fields]  # columns: config keys
        self.reconstructor = Reconstructor(config, workdir)
        self.description = self.reconstructor.description
        self.mask = build.sample_mask(config)
        self.data = _validation_slices(config, num_slices)
        identity = self.reconstructor.identity(config, self.data["volumes"], self.data["keys"], self.mask,
                                               exclude=tuple(self.fields))
        self.out = os.path.join(workdir, "tune", f"{identity.name}_{metric}")
        folders.check_not_input(self.out, "--workdir", input_folders(config, self.reconstructor,
                                                                     self.data["volumes"]))
        self.lock = folders.lock_folder(self.out, "--workdir", "tune folder")  # held until released or exit
        folders.remove_stale_temporaries(self.out)
        write_json(os.path.join(self.out, "identity.json"), {"identity": identity.name, "fields": identity.fields})
        self.trials = _Trials(os.path.join(self.out, "trials.csv"), self.keys)
        self.truth = sense_adjoint(self.data["kspace"], self.data["maps"], 1.0).abs()[:, 0].cpu().numpy()
        logging.info("tuning %s on %d validation slices of %s for %s into %s", self.description, len(self.truth),
                     config.data.eval_root, metric, self.out)
        if self.trials.rows:
            logging.info("reusing the %d finished trials of %s", len(self.trials.rows), self.trials.path)
        self.progress: tqdm | None = None
        self.new_trials = 0

    def values(self, point: tuple[int, ...]) -> tuple:
        return tuple(self.axes[a][1][i] for a, i in enumerate(point))

    def trial_settings(self, values: tuple):
        """The method's settings with the searched fields set to `values`."""
        return dataclasses.replace(self.reconstructor.settings, **dict(zip(self.fields, values)))

    def _run(self, values: tuple) -> dict:
        start = time.perf_counter()
        with torch.no_grad():
            recon, _ = self.reconstructor(self.mask * self.data["kspace"], self.data["maps"], self.mask,
                                          self.data["seeds"], settings=self.trial_settings(values))
        scores = [metrics.evaluate(t, r) for t, r in zip(self.truth, recon.mean(dim=1).abs().cpu().numpy())]
        result = {m: float(np.mean([s[m] for s in scores])) for m in METRICS}
        result["seconds"] = time.perf_counter() - start
        return result

    def objective(self, point: tuple[int, ...]) -> float:
        values = self.values(point)
        done = self.trials.get(values)
        if done is None:
            result = self._run(values)
            self.trials.add(values, result)
            done = self.trials.get(values)
            self._advance(values, result)
        value = float(done[self.metric])
        return value if math.isfinite(value) else -math.inf

    def planned_trials(self, start: tuple[int, ...]) -> int:
        """Trials of a search from `start` that improves nothing: the start, one coarse sweep, one refining sweep."""
        trials = 1
        for s, (_, grid, ordered) in zip(start, self.axes):
            coarse = [i for i in range(len(grid)) if not ordered or (i - s) % 2 == 0]
            trials += len(coarse) - 1 + (len([i for i in (s - 1, s + 1) if 0 <= i < len(grid)]) if ordered else 0)
        return trials

    def _advance(self, values: tuple, result: dict) -> None:
        """Log a finished trial and move the progress bar; the first new trial sets the estimate of the length."""
        logging.info("trial %d: %s -> PSNR %.2f dB, SSIM %.4f", len(self.trials.rows), dict(zip(self.keys, values)),
                     result["psnr"], result["ssim"])
        self.new_trials += 1
        if self.progress is None:
            return
        if self.new_trials == 1:
            logging.info("tune: %d trials planned (more while a sweep improves); the first took %.0f s, so about "
                         "%.0f min in all", self.progress.total, result["seconds"],
                         math.ceil(self.progress.total * result["seconds"] / 60))
        self.progress.total = max(self.progress.total, self.new_trials)
        self.progress.update(1)

    def search(self) -> dict:
        """Run the search (module docstring); returns the best settings with their scores and the folder."""
        settings = self.reconstructor.settings
        start = tuple(_snap(getattr(settings, field), grid) for field, (_, grid, _) in zip(self.fields, self.axes))
        planned = max(self.planned_trials(start) - len(self.trials.rows), 1)
        with tqdm(total=planned, unit="trial", desc="tune", disable=not sys.stderr.isatty(),
                  dynamic_ncols=True) as self.progress:
            point, _ = coordinate_search(self.objective, self.axes, start)
        self.progress = None
        best = dict(zip(self.keys, self.values(point)))
        row = self.trials.get(tuple(best.values()))
        result = {"sampling": best, "metric": self.metric, "psnr": float(row["psnr"]), "ssim": float(row["ssim"]),
                  "trials": len(self.trials.rows), "slices": len(self.truth), "description": self.description,
                  "grid_points": int(np.prod([len(grid) for _, grid, _ in self.axes]))}
        write_json(os.path.join(self.out, "best.json"), result)
        save_trials(os.path.join(self.out, "trials.png"), [float(r[self.metric]) for r in self.trials.rows.values()],
                    self.metric)
        logging.info("best of %d trials: %s (PSNR %.2f dB, SSIM %.4f)", result["trials"], best, result["psnr"],
                     result["ssim"])
        return {**result, "folder": self.out}


def tune(config, workdir: str, metric: str = "psnr", num_slices: int = 2) -> dict:
    """Search the sampler (or baseline) settings of `config` on validation slices; see the module docstring.
    Ctrl-C stops it with one line; the finished trials stay in `trials.csv` for the rerun."""
    prepare_data([config.data.eval_root], config.data.image_size)
    tuner = Tuner(config, workdir, metric, num_slices)
    try:
        return tuner.search()
    except KeyboardInterrupt:
        raise SystemExit(f"tune: interrupted; {len(tuner.trials.rows)} finished trials are kept in "
                         f"{tuner.trials.path}, rerun the same command to continue") from None
