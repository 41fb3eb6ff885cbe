"""Multi-coil MRI slices from fastMRI-layout `.h5` files, and the DataLoader factory.

A dataset is a folder of k-space files and a folder of coil-sensitivity files with the same file names:

    <kspace_root>/<name>.h5   dataset `kspace`  complex [slices, coils, H, W]  (centred k-space, fastMRI layout)
    <maps_root>/<name>.h5     dataset `s_maps`  complex [slices, coils, h, w]  (image domain)

The maps have the k-space matrix (`h, w = H, W`) or are already cropped (`data.image_size ≤ h ≤ H`, same for w);
`data_prepare/generate_smaps_fastMRI.py` writes them. Each item is one slice, centre-cropped in the image domain to
`data.image_size` and normalised (docs/ARCHITECTURE.md, "The mathematics"). The index (slices per file, read from
the `.h5` shapes) is cached in `$XDG_CACHE_HOME/hfs-sde/slice_index/` (default `~/.cache/...`), keyed by each
file's size and modification time, so a changed or added file is re-read and nothing is written into the data folders.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from utils.atomic import write_json
from utils.augment import AUGMENT_KEYS, augment_acquisition, augment_slice
from utils.common import check_setting, derived_seed, finite_above
from utils.mri import crop_kspace, ifft2c, sense_adjoint, sense_forward

log = logging.getLogger(__name__)

NORMALIZE_TYPES = ("std", "img_std", "minmax")
MODES = ("train", "eval", "test")
DATASHIFT_ALIASES = {"photom": "phantom"}  # the published quick start's folder name
_INDEX_VERSION = 1


class DataError(ValueError):
    """A data file or folder that cannot be used; the message (one line) names the path and the fix.

    A DataLoader worker re-raises an error of its dataset in the main process as the same type with the worker's
    whole traceback as message; a `DataError` keeps only the original message, so it still reads as one line.
    """

    def __init__(self, message: str):
        if message.startswith("Caught DataError in DataLoader worker"):
            message = message.rstrip().splitlines()[-1].split("DataError: ", 1)[-1]
        super().__init__(message)


_SKIP_HINT = "or set data.skip_broken=True to skip broken slices"


# ----------------------------------------------------------------------------------------------------------------
# Per-slice transforms.
# ----------------------------------------------------------------------------------------------------------------

def _std(x: torch.Tensor) -> torch.Tensor:
    """Population std of a complex tensor over all elements: `sqrt(mean|x − mean x|²)` (numpy's `np.std`),
    computed in one pass as `sqrt(‖x‖²/n − |mean x|²)`."""
    variance = torch.linalg.vector_norm(x) ** 2 / x.numel() - torch.abs(x.mean()) ** 2
    return torch.sqrt(torch.clamp(variance, min=0))


def _rescale01(x: torch.Tensor) -> torch.Tensor:
    """Map a real tensor linearly onto [0, 1] (`(x − min) / (max − min)`); a constant tensor maps to 0."""
    low = x.min()
    span = x.max() - low
    return (x - low) / span if span > 0 else torch.zeros_like(x)


def normalize_kspace(kspace: torch.Tensor, maps: torch.Tensor, normalize_type: str, coeff: float) -> torch.Tensor:
    """Normalise one slice of multi-coil k-space as the published code does (`normalize_type`: std, img_std or minmax).

    Args:
        kspace: complex centred k-space `[C, H, W]`.
        maps: complex coil sensitivities `[C, H, W]` (used by `minmax` only).
        normalize_type: `std`: `k / (coeff · std(k))`, std over all coils and samples of the complex array;
            `img_std`: `k / std(F⁻¹ k)`, the std of the coil images (no coefficient, as published);
            `minmax`: the map-combined image `x = Σ conj(S)·F⁻¹k` becomes `coeff · m · exp(i·p)` with `m` its
            magnitude and `p` its phase angle (radians) each mapped linearly onto [0, 1], then `k = F(S·x)`.
        coeff: `data.normalize_coeff`.

    Returns:
        complex k-space `[C, H, W]`. An all-zero slice stays zero.
    """
    if normalize_type == "std":
        scale = coeff * _std(kspace)
        return kspace / scale if scale > 0 else kspace
    if normalize_type == "img_std":
        scale = _std(ifft2c(kspace))
        return kspace / scale if scale > 0 else kspace
    if normalize_type == "minmax":
        ones = torch.ones((), dtype=kspace.real.dtype)
        image = sense_adjoint(kspace[None], maps[None], ones)
        image = coeff * _rescale01(image.abs()) * torch.exp(1j * _rescale01(image.angle()))
        return sense_forward(image, maps[None], ones)[0]
    raise ValueError(f"unknown data.normalize_type {normalize_type!r}; choose one of {list(NORMALIZE_TYPES)}")


# ----------------------------------------------------------------------------------------------------------------
# The slice index.
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Volume:
    """One k-space file and its maps file, with the dataset shapes `[slices, coils, H, W]` of each."""

    kspace_path: str
    maps_path: str
    kspace_shape: tuple[int, int, int, int]
    maps_shape: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return Path(self.kspace_path).stem


def default_maps_root(kspace_root: str) -> str:
    """`<root>_maps` beside the k-space folder (the layout `data.maps_root = ""` stands for)."""
    return os.path.normpath(kspace_root) + "_maps"


def index_cache_path(kspace_root: str, maps_root: str) -> Path:
    """The JSON file caching the index of one (k-space folder, maps folder) pair."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hfs-sde" / "slice_index"
    key = f"{os.path.abspath(kspace_root)}\n{os.path.abspath(maps_root)}"
    return cache / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".json")


# The data sets of the bundled configs: folder (relative to the repository) -> (command that writes it, run from
# the repository folder; whether it needs nothing downloaded, so training and tuning generate it on first use).
_PHANTOM = "python data_prepare/generate_smaps_phantom.py --out {out} --size {size}"
BUNDLED_SETS = {
    "data/phantom": (_PHANTOM + " --train 200 --val 8", True),
    "data/phantom_demo": (_PHANTOM + " --train 400 --val 4 --seed 7", True),
    "data/brain_demo": ("pip download nilearn --no-deps -d /tmp/wheels && python data_prepare/generate_brain_demo.py "
                        "--source /tmp/wheels --out {out} --size {size}", False),
}
_REPO = os.path.dirname(os.path.abspath(__file__))


def data_command(folder: str, image_size: int) -> tuple[str, bool] | None:
    """`(command, needs no download)` that writes `folder` when it is a split of a bundled config's data set
    (`BUNDLED_SETS`, images of `image_size`), else None."""
    parent = os.path.relpath(os.path.dirname(os.path.abspath(folder)), _REPO)
    if parent not in BUNDLED_SETS:
        return None
    command, generated = BUNDLED_SETS[parent]
    return command.format(out=os.path.dirname(os.path.normpath(folder)), size=image_size), generated


def missing_folder_hint(folder: str, image_size: int) -> str:
    """How to make a missing data folder: the bundled set's command, else the config keys and the maps script."""
    known = data_command(folder, image_size)
    if known is not None:
        return f"create it with `{known[0]}`"
    return ("give a folder of fastMRI multi-coil .h5 files (config keys data.root, data.eval_root, "
            "data.test_roots.<set>)")


def list_h5_files(folder: str, what: str = "k-space", image_size: int = 320) -> list[str]:
    """Sorted `.h5` files of a folder; a clear error, naming the command that makes the data, when the folder is
    missing or holds none."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what} folder {folder} does not exist; {missing_folder_hint(folder, image_size)}")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".h5"))
    if not files:
        raise FileNotFoundError(f"{what} folder {folder} holds no .h5 files; "
                                f"{missing_folder_hint(folder, image_size)}")
    return files


def _stamp(path: str) -> list[int]:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


MAX_SLICES = 10_000  # slices of one file: fastMRI volumes hold tens
MAX_SLICE_BYTES = 2**31  # one slice of one file (all coils): a 64-coil 640×640 slice is 0.2 GiB


def _read_shape(path: str, key: str, fix: str) -> list[int]:
    """Shape of dataset `key` of an `.h5` file, checked to be complex `[slices, coils, H, W]`."""
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataError(f"{path} has no {key!r} dataset (it holds {sorted(f.keys())}); {fix}")
            data = f[key]
            shape, dtype = [int(n) for n in data.shape], data.dtype
    except OSError as err:
        raise DataError(f"{path} is not a readable HDF5 file ({err}); it may be truncated or still being "
                        f"copied: replace it, or move it out of the folder") from err
    if len(shape) != 4 or dtype.kind != "c":
        raise DataError(f"{path}: {key!r} is {dtype} of shape {shape}; a complex [slices, coils, H, W] array is "
                        f"needed (multi-coil fastMRI layout); {fix}")
    slice_bytes = shape[1] * shape[2] * shape[3] * dtype.itemsize
    if shape[0] > MAX_SLICES or slice_bytes > MAX_SLICE_BYTES:
        raise DataError(f"{path}: {key!r} claims shape {shape} ({shape[0]} slices of {slice_bytes / 2**30:.3g} GiB); "
                        f"at most {MAX_SLICES} slices of at most {MAX_SLICE_BYTES / 2**30:g} GiB are read (a damaged "
                        f"header?): replace the file, or move it out of the folder")
    return shape


def _check_pair(volume: Volume, image_size: int) -> None:
    """Raise `DataError` when the maps do not match the k-space or the matrix is smaller than the crop."""
    k, m, maps = volume.kspace_shape, volume.maps_shape, volume.maps_path
    regenerate = (f"regenerate it with `python data_prepare/generate_smaps_fastMRI.py "
                  f"--input {Path(volume.kspace_path).parent} --output {Path(maps).parent}`")
    if k[0] == 0:
        raise DataError(f"{volume.kspace_path}: 'kspace' holds no slices; leave this file out")
    if k[2] < image_size or k[3] < image_size:
        raise DataError(f"{volume.kspace_path}: the k-space matrix {k[2]}×{k[3]} is smaller than "
                        f"data.image_size={image_size}; lower data.image_size or leave this file out")
    if m[:2] != k[:2]:
        raise DataError(f"{maps}: 's_maps' has {m[0]} slices × {m[1]} coils but {volume.kspace_path} has "
                        f"{k[0]} slices × {k[1]} coils in 'kspace'; {regenerate}")
    if not (image_size <= m[2] <= k[2] and image_size <= m[3] <= k[3]):
        raise DataError(f"{maps}: 's_maps' is {m[2]}×{m[3]} per coil; it must be the k-space matrix {k[2]}×{k[3]} "
                        f"or a centre crop of it at least data.image_size={image_size} wide; {regenerate}")


def _load_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache.get("files", {}) if cache.get("version") == _INDEX_VERSION else {}


def _save_cache(path: Path, kspace_root: str, maps_root: str, files: dict) -> None:
    """Write the index atomically; a cache that cannot be written only costs a re-scan next time."""
    payload = {"version": _INDEX_VERSION, "kspace_root": os.path.abspath(kspace_root),
               "maps_root": os.path.abspath(maps_root), "files": files}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, payload)
    except OSError as err:
        log.debug("could not write the slice index cache %s: %s", path, err)


def build_index(kspace_root: str, maps_root: str, image_size: int, skip_broken: bool = False) -> list[Volume]:
    """Scan a k-space folder and its maps folder; return the usable volumes in file-name order.

    Shapes come from the cache when a file's size and modification time are unchanged, otherwise from the file;
    the cache is rewritten when anything changed. Every file is checked (readable, `kspace`/`s_maps` present,
    complex 4-D, maps matching the k-space, matrix ≥ `image_size`).

    Raises:
        FileNotFoundError: a folder is missing or holds no `.h5` files.
        DataError: a broken file (unless `skip_broken`, which warns and leaves the file out), or nothing usable.
    """
    files = list_h5_files(kspace_root, "k-space", image_size)
    if not os.path.isdir(maps_root):
        raise FileNotFoundError(f"maps folder {maps_root} (for {kspace_root}) does not exist; create it with "
                                f"`python data_prepare/generate_smaps_fastMRI.py --input {kspace_root} "
                                f"--output {maps_root}`, or set data.maps_root, data.eval_maps_root or "
                                f"data.test_maps_roots.<datashift>")
    cache_path = index_cache_path(kspace_root, maps_root)
    cached = _load_cache(cache_path)
    entries, volumes = {}, []
    for kspace_path in files:
        name = os.path.basename(kspace_path)
        maps_path = os.path.join(maps_root, name)
        try:
            if not os.path.isfile(maps_path):
                raise DataError(f"{kspace_path} has no maps file {maps_path}; create it with `python "
                                f"data_prepare/generate_smaps_fastMRI.py --input {kspace_root} --output {maps_root}`")
            stamps = {"kspace": _stamp(kspace_path), "maps": _stamp(maps_path)}
            entry = cached.get(name)
            if entry is None or entry["kspace"] != stamps["kspace"] or entry["maps"] != stamps["maps"]:
                fix = "is it a fastMRI multi-coil file?"
                entry = dict(stamps, kspace_shape=_read_shape(kspace_path, "kspace", fix),
                             maps_shape=_read_shape(maps_path, "s_maps", "is it a maps file written by "
                                                    "data_prepare/generate_smaps_fastMRI.py?"))
            volume = Volume(kspace_path, maps_path, tuple(entry["kspace_shape"]), tuple(entry["maps_shape"]))
            _check_pair(volume, image_size)
        except DataError as err:
            if not skip_broken:
                raise DataError(f"{err} (or set data.skip_broken=True to leave broken files out)") from err
            warnings.warn(f"skipping {kspace_path}: {err}", stacklevel=2)
            continue
        entries[name] = entry
        volumes.append(volume)
    if entries != cached:
        _save_cache(cache_path, kspace_root, maps_root, entries)
    if not volumes:
        raise DataError(f"no usable files in {kspace_root}: every file was skipped as broken")
    return volumes


def kept_slices(num_slices: int, skip_slices: int) -> range:
    """Slices of a volume used when the first `skip_slices` are left out; a volume with no more than
    `skip_slices` slices keeps its last slice (the published code keeps at least one slice per volume)."""
    return range(min(skip_slices, num_slices - 1), num_slices)


# ----------------------------------------------------------------------------------------------------------------
# Dataset, collation and loaders.
# ----------------------------------------------------------------------------------------------------------------

class MultiCoilSliceDataset(Dataset):
    """Slices of a folder of fastMRI-layout multi-coil files with their coil sensitivities.

    Args:
        kspace_root: folder of `.h5` files with `kspace` `[slices, coils, H, W]`.
        maps_root: folder of `.h5` files with the same names and `s_maps` (see the module docstring).
        config: reads `data.image_size`, `data.normalize_type`, `data.normalize_coeff`.
        skip_slices: leave out the first slices of every volume (see `kept_slices`).
        skip_broken: leave broken files out with a warning instead of raising `DataError`, and broken slices
            (unreadable, or k-space or maps with NaN or Inf) with a one-line log warning (the item is `None`, which
            `collate_multicoil` drops).
        augment: augment each slice (`utils/augment.py`) with the settings of `data.augment`, drawing from a
            generator seeded by `(config.seed, epoch, index)` (`set_epoch` sets the epoch).

    Items are dicts: `kspace` complex64 `[C, S, S]` (S = `data.image_size`; cropped in the image domain, then
    augmented and normalised), `maps` complex64 `[C, S, S]` (cropped), `fname` (file stem), `slice` (index in
    the volume). A slice that cannot be read or holds non-finite k-space or maps raises a `DataError` naming the
    file and slice (`None` with `skip_broken`).
    """

    def __init__(self, kspace_root: str, maps_root: str, config, skip_slices: int = 0, skip_broken: bool = False,
                 augment: bool = False):
        self.kspace_root, self.maps_root = kspace_root, maps_root
        self.image_size = int(config.data.image_size)
        settings = config.data.augment
        self.augment = settings if augment and any(settings[key] for key in AUGMENT_KEYS) else None
        self.pixel_mm = float(settings.fov_mm) / self.image_size
        self.seed, self.epoch = int(config.seed), 0
        self.normalize_type = config.data.normalize_type
        self.normalize_coeff = float(config.data.normalize_coeff)
        if self.normalize_type not in NORMALIZE_TYPES:
            raise ValueError(f"unknown data.normalize_type {self.normalize_type!r}; "
                             f"choose one of {list(NORMALIZE_TYPES)}")
        check_setting("data.normalize_coeff", self.normalize_coeff, finite_above(self.normalize_coeff, 0),
                      "a finite number > 0")
        self.skip_broken = skip_broken
        self.volumes = build_index(kspace_root, maps_root, self.image_size, skip_broken)
        self.slices = [(v, s) for v in range(len(self.volumes))
                       for s in kept_slices(self.volumes[v].kspace_shape[0], skip_slices)]

    def __len__(self) -> int:
        return len(self.slices)

    def set_epoch(self, epoch: int) -> None:
        """Seed the augmentation of the coming epoch (loaders made afterwards carry it to their workers)."""
        self.epoch = int(epoch)

    def _augment(self, idx: int, kspace: torch.Tensor, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment the map-combined image and make the coil k-space again: `k = F(S' x')`."""
        ones = torch.ones((), dtype=kspace.real.dtype)
        image = sense_adjoint(kspace[None], maps[None], ones)[0, 0].numpy()
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        image, maps_np = augment_slice(image, maps.numpy(), rng, self.augment, self.pixel_mm)
        kspace_np, maps_np = augment_acquisition(image, maps_np, rng, self.augment)
        return torch.from_numpy(kspace_np), torch.from_numpy(maps_np)

    def _read(self, path: str, key: str, index: tuple) -> np.ndarray:
        """`f[key][index]` of an `.h5` file; a read failure becomes a `DataError` naming the file and slice."""
        try:
            with h5py.File(path, "r") as f:
                return f[key][index]
        except (OSError, KeyError) as err:
            raise DataError(f"cannot read slice {index[0]} of {path} ({key!r}): {err}; the file changed or is "
                            f"damaged: replace it, {_SKIP_HINT}") from err

    @staticmethod
    def _check_finite(array: np.ndarray, path: str, key: str, slice_idx: int) -> None:
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise DataError(f"{path}: {key!r} of slice {slice_idx} holds {bad} non-finite values (NaN or Inf); "
                            f"repair or remove the file, {_SKIP_HINT}")

    def __getitem__(self, idx: int) -> dict | None:
        try:
            return self._load(idx)
        except DataError as err:
            if not self.skip_broken:
                raise
            log.warning("skipping a broken slice: %s", err)
            return None

    def _load(self, idx: int) -> dict:
        volume_idx, slice_idx = self.slices[idx]
        volume = self.volumes[volume_idx]
        size = (self.image_size, self.image_size)
        # Read the maps' centre crop only; k-space needs the full matrix for the image-domain crop.
        h, w = volume.maps_shape[2:]
        top, left = (h - size[0]) // 2, (w - size[1]) // 2
        maps = self._read(volume.maps_path, "s_maps", (slice_idx, slice(None), slice(top, top + size[0]),
                                                       slice(left, left + size[1])))
        kspace = self._read(volume.kspace_path, "kspace", (slice_idx,))
        self._check_finite(maps, volume.maps_path, "s_maps", slice_idx)
        self._check_finite(kspace, volume.kspace_path, "kspace", slice_idx)
        maps = torch.from_numpy(maps.astype(np.complex64, copy=False))
        kspace = crop_kspace(torch.from_numpy(kspace.astype(np.complex64, copy=False)), size)
        if self.augment is not None:
            kspace, maps = self._augment(idx, kspace, maps)
        kspace = normalize_kspace(kspace, maps, self.normalize_type, self.normalize_coeff)
        return {"kspace": kspace, "maps": maps, "fname": volume.name, "slice": slice_idx}


def collate_multicoil(batch: list[dict | None]) -> dict | None:
    """Stack items into a batch, zero-padding the coil dimension to the largest coil count of the batch.

    Zero maps and zero k-space add nothing to `Aᴴ` and are kept at zero by `A`, so padded coils leave every SENSE
    operation unchanged and files with different coil counts (fastMRI brain) batch together. `None` items (broken
    slices skipped by `data.skip_broken`) are left out.

    Returns:
        dict with `kspace`, `maps` complex64 `[B, C_max, H, W]`, `fname` list of str, `slice` int64 `[B]`; `None`
        when every item was skipped.
    """
    batch = [item for item in batch if item is not None]
    if not batch:
        return None
    num_coils = max(item["kspace"].shape[0] for item in batch)
    out = {}
    for key in ("kspace", "maps"):
        first = batch[0][key]
        stacked = first.new_zeros((len(batch), num_coils) + tuple(first.shape[1:]))
        for i, item in enumerate(batch):
            stacked[i, :item[key].shape[0]] = item[key]
        out[key] = stacked
    out["fname"] = [item["fname"] for item in batch]
    out["slice"] = torch.tensor([item["slice"] for item in batch], dtype=torch.int64)
    return out


def _split_folders(config, mode: str) -> tuple[str, str]:
    """(k-space folder, maps folder) of a mode, from the config (see `get_dataset`)."""
    data = config.data
    if mode == "train":
        root, maps_root = data.root, data.maps_root
    elif mode == "eval":
        root, maps_root = data.eval_root, data.eval_maps_root
    else:
        shift = DATASHIFT_ALIASES.get(config.sampling.datashift, config.sampling.datashift)
        if shift not in data.test_roots:
            raise ValueError(f"unknown sampling.datashift {config.sampling.datashift!r}; choose one of "
                             f"{sorted(data.test_roots.keys())} or add its folder as data.test_roots.{shift}")
        root = data.test_roots[shift]
        maps_root = data.test_maps_roots.get(shift, "")
    return root, maps_root or default_maps_root(root)


def make_dataset(config, mode: str) -> MultiCoilSliceDataset:
    """The slices of `mode` (folders, skipped slices and augmentation as `get_dataset` lists), without a loader."""
    if mode not in MODES:
        raise ValueError(f"unknown dataset mode {mode!r}; choose one of {list(MODES)}")
    root, maps_root = _split_folders(config, mode)
    skip = int(config.training.skip_slices) if mode != "test" else 0
    return MultiCoilSliceDataset(root, maps_root, config, skip_slices=skip, skip_broken=config.data.skip_broken,
                                 augment=mode == "train")


def get_dataset(config, mode: str) -> DataLoader:
    """DataLoader of the training (`train`), validation (`eval`) or reconstruction (`test`) slices.

    - `train`: `data.root` / `data.maps_root`, first `training.skip_slices` slices of each volume left out,
      augmented (`data.augment`); the loader of epoch 0 made by `train_loader`, which makes every epoch's loader.
    - `eval`: `data.eval_root` / `data.eval_maps_root`, slices skipped as for training, in file order,
      `training.batch_size` (the first batch is training's held-out batch).
    - `test`: `data.test_roots[sampling.datashift]` (`photom` is read as `phantom`) with maps in
      `data.test_maps_roots[...]` (empty: `<root>_maps`), every slice in file order, `sampling.batch_size` (a
      number: the reconstruction harness resolves `0`, automatic, and shards the slices with `ordered_loader`).

    Workers: `training.num_workers`; `pin_memory` when `config.device` is CUDA.
    """
    dataset = make_dataset(config, mode)
    batch_size = int(config.training.batch_size if mode != "test" else config.sampling.batch_size)
    if mode == "train":
        return train_loader(dataset, config, epoch=0)
    return ordered_loader(dataset, config, batch_size)


def ordered_loader(dataset: MultiCoilSliceDataset, config, batch_size: int, indices=None) -> DataLoader:
    """Batches of `batch_size` slices of `dataset` taken in the order of `indices` (default: every slice in file
    order), collated by `collate_multicoil`; `training.num_workers` workers, `pin_memory` on CUDA."""
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=int(config.training.num_workers),
                      collate_fn=collate_multicoil, pin_memory=str(config.device).startswith("cuda"))


def _rank_and_world_size() -> tuple[int, int]:
    """`(rank, world size)` of `torch.distributed` when initialised (torchrun), else `(0, 1)`."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochSampler(DistributedSampler):
    """The slice indices of one epoch for one process: a `DistributedSampler` shuffled with `seed + epoch`, one
    shard per rank, incomplete last batch dropped, that starts part-way into the epoch by skipping `skip` indices."""

    def __init__(self, dataset, rank: int, world_size: int, seed: int, epoch: int, skip: int):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return max(super().__len__() - self.skip, 0)


def train_loader(dataset: MultiCoilSliceDataset, config, epoch: int, skip_batches: int = 0) -> DataLoader:
    """The training batches of `epoch` on this process, from batch `skip_batches` on (a resumed epoch).

    This process's shard (`torch.distributed` rank) of `dataset` in the order seeded by `config.seed` and `epoch`,
    `training.batch_size` slices per batch, the incomplete last batch dropped; the augmentation is seeded by
    `(seed, epoch, slice)` and the `training.num_workers` worker processes by `(seed, epoch, rank)`, so an epoch
    reads the same batches whether it runs whole or is resumed.
    """
    rank, world_size = _rank_and_world_size()
    batch_size, seed = int(config.training.batch_size), int(config.seed)
    per_process = len(dataset) // world_size
    if per_process < batch_size:
        skip = int(config.training.skip_slices)
        raise DataError(f"training.batch_size={batch_size} is larger than the {per_process} training slices "
                        f"per process in {dataset.kspace_root} ({len(dataset)} after skipping {skip} slices per "
                        f"volume); lower training.batch_size (e.g. --config.training.batch_size="
                        f"{max(per_process, 1)}), lower training.skip_slices, or add data")
    dataset.set_epoch(epoch)
    sampler = EpochSampler(dataset, rank, world_size, seed, epoch, skip_batches * batch_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=int(config.training.num_workers),
                      collate_fn=collate_multicoil, pin_memory=str(config.device).startswith("cuda"), drop_last=True,
                      generator=torch.Generator().manual_seed(derived_seed(seed, epoch, rank)))
