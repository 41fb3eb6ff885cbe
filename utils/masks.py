"""Undersampling masks in the published families and naming.

Every mask is a real `[n, n]` array of 0/1, 1 where k-space is sampled, DC at `(n // 2, n // 2)`. 1-D families
sample whole columns (the phase-encode direction is the last axis, as in fastMRI). Published file names:

    uniform_acc{R}_acs{L}         L centre columns + every R-th remaining column (ascending, first one included)
    low_frequency_acs{L}          the L centre columns only (HFS-SDE's low-frequency mask for 1-D sampling)
    center_length{L}              a centred L×L square (low-frequency mask for 2-D sampling)
    cartesian_acc{R}_acs{L}       L centre columns + Gaussian variable-density random columns (seeded)
    random_uniform_acc{R}_acs{L}  L centre columns + uniformly random columns (seeded)

A mask folder (`data.mask_root`, default `mask/`) holds the published 320×320 masks at its top level and masks of
other sizes in `<size>/` subfolders (`utils/generate_mask.py` writes them there), so generating a mask never
replaces a shipped one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import scipy.io
import torch

from utils.atomic import atomic_path

KINDS = ("uniform", "low_frequency", "center", "cartesian", "random_uniform")
_NEEDS_ACC = ("uniform", "cartesian", "random_uniform")


def _acs_columns(size: int, acs: int) -> np.ndarray:
    return np.arange((size - acs) // 2, (size + acs) // 2)


def _random_columns(size: int, acc: float, acs: int, pdf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ACS columns plus `int(size / acc) − acs` further columns drawn without replacement from `pdf`."""
    centre = _acs_columns(size, acs)
    pdf = pdf.astype(np.float64).copy()
    pdf[centre] = 0.0
    n_extra = int(size / acc) - acs
    if n_extra < 0:
        raise ValueError(f"acs={acs} already samples more than size/acc={size / acc:g} columns; lower acs or acc")
    line = np.zeros(size)
    line[centre] = 1.0
    line[rng.choice(size, n_extra, replace=False, p=pdf / pdf.sum())] = 1.0
    return line


def make_mask(kind: str, size: int, acc: float | None = None, acs: int | None = None,
              seed: int | None = None) -> np.ndarray:
    """Build a `[size, size]` float32 mask of 0/1 of the given family (see the module docstring).

    Args:
        kind: one of `KINDS`.
        size: matrix size n (the mask is n × n).
        acc: acceleration R (uniform, cartesian, random_uniform).
        acs: number of fully sampled centre columns, or the side of the centre square for `center`.
        seed: seed of the random families (cartesian, random_uniform); the same seed gives the same mask.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown mask type {kind!r}; choose one of {list(KINDS)}")
    if acs is None or not 0 < int(acs) <= size:
        raise ValueError(f"mask {kind!r} needs acs between 1 and the image size {size}, got {acs!r}")
    acs = int(acs)
    if kind in _NEEDS_ACC and (acc is None or float(acc) < 1):
        raise ValueError(f"mask {kind!r} needs an acceleration acc >= 1, got {acc!r}")

    if kind == "center":
        mask = np.zeros((size, size), np.float32)
        start, stop = int((size - acs) / 2), int((size + acs) / 2)
        mask[start:stop, start:stop] = 1.0
        return mask

    line = np.zeros(size)
    centre = _acs_columns(size, acs)
    if kind == "low_frequency":
        line[centre] = 1.0
    elif kind == "uniform":
        outer = np.setdiff1d(np.arange(size), centre)
        line[centre] = 1.0
        line[outer[::int(acc)]] = 1.0
    else:
        rng = np.random.default_rng(seed)
        if kind == "cartesian":
            # Gaussian density of width size/10 around the centre plus a uniform floor (kt-FOCUSS style).
            pdf = np.exp(-0.5 / (size / 10.0) ** 2 * (np.arange(size) - size / 2) ** 2)
            pdf += (size / (2.0 * float(acc))) / size
        else:
            pdf = np.ones(size)
        line = _random_columns(size, float(acc), acs, pdf, rng)
    return np.repeat(line[None, :], size, axis=0).astype(np.float32)


def mask_name(kind: str, acc: float | None, acs: int) -> str:
    """Published file stem for a mask, e.g. `uniform_acc10_acs24`, `low_frequency_acs16`, `center_length24`."""
    if kind == "center":
        return f"center_length{acs}"
    if kind == "low_frequency":
        return f"low_frequency_acs{acs}"
    acc_text = f"{acc:g}" if isinstance(acc, float) else str(acc)
    return f"{kind}_acc{acc_text}_acs{acs}"


def save_mask(path: str, mask: np.ndarray) -> None:
    """Write a mask as a compressed MATLAB file with key `mask`, atomically (`utils/atomic.py`)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        scipy.io.savemat(f, {"mask": mask.astype(np.float32)}, do_compression=True)


def load_mask(path: str) -> np.ndarray:
    """Read the `mask` key of a `.mat` file as a real float32 array."""
    try:
        data = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises several types for unreadable files
        raise ValueError(f"cannot read mask file {path}: {err}") from err
    if "mask" not in data:
        raise ValueError(f"mask file {path} has no key 'mask' (keys: {[k for k in data if not k.startswith('__')]})")
    mask = np.abs(np.asarray(data["mask"])).astype(np.float32)
    if mask.ndim != 2:
        raise ValueError(f"mask file {path} holds an array of shape {mask.shape}; a 2-D [H, W] mask is needed")
    return mask


@dataclass(frozen=True)
class MaskSpec:
    """Which mask to use: family `kind`, acceleration `acc`, centre size `acs`, matrix size `size`, the mask folder
    `root` and the seed of the random families; `key` is the config group that chose it (`training` for HFS-SDE's
    low-frequency mask, `sampling` for the sampling mask), named in messages."""

    kind: str
    acc: float | None
    acs: int
    size: int
    root: str
    seed: int
    key: str = "sampling"

    @property
    def name(self) -> str:
        return mask_name(self.kind, self.acc, self.acs)


def get_mask(spec: MaskSpec) -> torch.Tensor:
    """The mask of `spec` as a float32 tensor `[1, 1, H, W]` on the CPU.

    Loads `<root>/<size>/<published name>.mat` or else `<root>/<published name>.mat` when it exists, otherwise
    generates the mask at `size` (random families seeded by `seed`). A stored mask of another size is replaced by
    the generated one when it follows a deterministic family's rule exactly (the shipped 320×320 masks serve any
    image size); any other size mismatch is an error whose message gives the `utils/generate_mask.py` command that
    writes the mask of the right size.
    """
    kind, acc, acs, size, root, seed = spec.kind, spec.acc, spec.acs, spec.size, spec.root, spec.seed
    if kind not in KINDS:
        raise ValueError(f"unknown {spec.key}.mask_type {kind!r}; choose one of {list(KINDS)}")
    name = spec.name + ".mat"
    sized = os.path.join(root, str(size), name)
    path = sized if os.path.exists(sized) else os.path.join(root, name)
    if os.path.exists(path):
        mask = load_mask(path)
        if mask.shape != (size, size) and _follows_rule(mask, kind, acc, acs, seed):
            mask = make_mask(kind, size, acc=acc, acs=acs, seed=seed)
        elif mask.shape != (size, size):
            raise ValueError(f"mask file {path} is {mask.shape[0]}×{mask.shape[1]} but data.image_size is {size}; "
                             f"write one of that size (the shipped masks stay as they are) with "
                             f"`{generate_command(kind, acc, acs, size, seed, os.path.join(root, str(size)))}`")
    else:
        mask = make_mask(kind, size, acc=acc, acs=acs, seed=seed)
    return torch.from_numpy(mask)[None, None]


def generate_command(kind: str, acc, acs: int, size: int, seed: int, out: str) -> str:
    """The `utils/generate_mask.py` command line that writes this mask into folder `out`."""
    parts = ["python utils/generate_mask.py", f"--type {kind}"]
    if kind in _NEEDS_ACC:
        parts.append(f"--acc {acc:g}")
    parts += [f"--acs {acs}", f"--size {size}"]
    if kind in ("cartesian", "random_uniform"):
        parts.append(f"--seed {seed}")
    return " ".join(parts + [f"--out {out}"])


def _follows_rule(mask: np.ndarray, kind: str, acc, acs: int, seed: int) -> bool:
    """Whether a stored square mask is exactly what `make_mask` gives at its size (then any size may be generated)."""
    n = mask.shape[0]
    return mask.shape == (n, n) and kind not in ("cartesian", "random_uniform") and np.array_equal(
        mask, make_mask(kind, n, acc=acc, acs=acs, seed=seed))


def holdout_split(mask: torch.Tensor, every: int = 4, fold: int = 0,
                  folds: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a sampling mask `[..., H, W]` into `(kept, held)` for k-space cross-validation: the measured columns
    (phase-encode lines, the last axis; a column counts when any of its samples is measured) outside the centre
    block (the run of measured columns through column W // 2, kept whole) are taken in ascending order and
    every `every`-th one (the `every`-th, 2·`every`-th, …) is held out. `kept + held == mask`; for
    `uniform_acc{R}` and `every=2` this is `uniform_acc{2R}` with the same centre and the lines between.
    Fold `fold` of `folds` (1 ≤ `folds` ≤ `every`) shifts the held-out lines `fold·every // folds` back (fold 0 is
    the split above), so that the folds hold out disjoint lines spread evenly between one another. A mask with
    fewer than `every` measured columns outside the centre has nothing to hold out: ValueError."""
    measured = (mask.reshape(-1, *mask.shape[-2:])[0] > 0).any(dim=0)
    centre = torch.zeros_like(measured)
    middle = len(measured) // 2
    if measured[middle]:
        left, right = middle, middle
        while left > 0 and measured[left - 1]:
            left -= 1
        while right + 1 < len(measured) and measured[right + 1]:
            right += 1
        centre[left:right + 1] = True
    outside = torch.nonzero(measured & ~centre).flatten()
    if len(outside) < every:
        raise ValueError(f"sampling.cross_validate holds out every sampling.cv_every={every}-th measured line outside "
                         f"the fully sampled centre of the sampling mask, which has {len(outside)} such lines: lower "
                         f"sampling.cv_every (≥ 2), use another mask, or switch cross-validation off")
    columns = torch.zeros_like(measured)
    columns[outside[every - 1 - fold * every // folds::every]] = True
    held = mask * columns.to(mask.dtype)
    return mask - held, held
