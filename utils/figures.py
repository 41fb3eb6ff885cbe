"""Figures of reconstructions: one panel per slice and a combined comparison figure (matplotlib, no screen). Every
figure is written as a PNG, atomically (`utils/atomic.py`)."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.atomic import atomic_path  # noqa: E402


def _save(fig, path: str) -> None:
    """Write `fig` as a PNG to `path` (creating its folder) atomically, and close it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _title(name: str, metrics: dict | None) -> str:
    if not metrics:
        return name
    return f"{name}\nPSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.3f}"


def save_panel(path: str, zero_filled: np.ndarray, recon: np.ndarray, truth: np.ndarray,
               zf_metrics: dict, recon_metrics: dict, title: str, std: np.ndarray | None = None) -> None:
    """Zero-filled | reconstruction | ground truth | |error| of one slice as a PNG. The images (magnitudes `[H, W]`) are shown as given, on the ground truth's grey scale; the error
    panel `|recon − truth|` is shown 5× brighter, with a colour bar in the images' units; a `std` map follows on the
    error panel's scale. `title` names the reconstruction (e.g. `HFS-SDE PC, 100 steps`); the
    metrics dicts give the PSNR and SSIM in the titles; `std` is the predicted error std (runners/uncertainty.py) or
    the posterior samples' std."""
    vmax = float(truth.max()) or 1.0
    panels = [(zero_filled, _title("zero-filled", zf_metrics), vmax), (recon, _title(title, recon_metrics), vmax),
              (truth, "ground truth", vmax), (np.abs(recon - truth), "|error| (5× brighter)", vmax / 5)]
    if std is not None:
        panels.append((std, "predicted error std (5× brighter)", vmax / 5))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.35 * len(panels) + 0.1, 3.9),
                             gridspec_kw={"width_ratios": [1] * (len(panels) - 1) + [1.08]})
    for ax, (image, name, top) in zip(axes, panels):
        shown = ax.imshow(image, cmap="gray", vmin=0, vmax=top)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.colorbar(shown, ax=axes[-1], fraction=0.046, pad=0.03)
    fig.tight_layout()
    _save(fig, path)


def save_comparison(path: str, rows: list[tuple[str, np.ndarray, dict | None]], truth: np.ndarray,
                    heading: str) -> None:
    """One row of images, one per method (`(name, magnitude [H, W], metrics)`), then the ground truth, under
    `heading` (what the figure shows)."""
    vmax = float(truth.max()) or 1.0
    columns = rows + [("ground truth", truth, None)]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 4.2))
    for ax, (name, image, metrics) in zip(np.atleast_1d(axes), columns):
        ax.imshow(image, cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(_title(name, metrics), fontsize=9)
        ax.axis("off")
    fig.suptitle(heading, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def save_trials(path: str, values: list[float], metric: str) -> None:
    """Each trial's score in the order tried, with the running best (the record of a sampler-settings search)."""
    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(values) + 1), values, "o", ms=3, label="trial")
    ax.plot(np.arange(1, len(values) + 1), np.maximum.accumulate(np.nan_to_num(values, nan=-np.inf)), "-",
            label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric.upper())
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def save_curves(path: str, curves: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str) -> None:
    """One line per named curve of `(x, y)` points (e.g. PSNR against network evaluations), log-scaled x."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, points in curves.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, "o-", ms=4, label=name)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def save_reliability(path: str, curves: dict[str, tuple[list[float], list[float]]], heading: str = "") -> None:
    """Reliability diagram: observed against nominal coverage of an error map's intervals, one line per named
    `(nominal, observed)` curve, with the diagonal a calibrated map follows."""
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="calibrated")
    for name, (nominal, observed) in curves.items():
        ax.plot(nominal, observed, "o-", ms=3, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal coverage of ±z·error std")
    ax.set_ylabel("observed coverage (object pixels)")
    if heading:
        ax.set_title(heading, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, path)
