"""The slice index of a (k-space folder, maps folder) pair: every file's dataset shapes, read from the `.h5` files,
checked, and cached in `$XDG_CACHE_HOME/hfs-sde/slice_index/` (default `~/.cache/...`) keyed by each file's size and
modification time, so a changed or added file is re-read and nothing is written into the data folders."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py

from multicoil.errors import DataError
from multicoil.folders import check_regular, list_h5_files
from utils.atomic import write_json

log = logging.getLogger(__name__)

_INDEX_VERSION = 1


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


def index_cache_path(kspace_root: str, maps_root: str) -> Path:
    """The JSON file caching the index of one (k-space folder, maps folder) pair."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hfs-sde" / "slice_index"
    key = f"{os.path.abspath(kspace_root)}\n{os.path.abspath(maps_root)}"
    return cache / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".json")


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
            check_regular(kspace_path)
            if not os.path.lexists(maps_path):
                raise DataError(f"{kspace_path} has no maps file {maps_path}; create it with `python "
                                f"data_prepare/generate_smaps_fastMRI.py --input {kspace_root} --output {maps_root}`")
            check_regular(maps_path)
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
