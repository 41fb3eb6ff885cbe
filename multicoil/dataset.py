"""The `Dataset` of multi-coil slices, its collation, and the loader that carries a worker's `SliceError` across
the process boundary."""
from __future__ import annotations

import logging

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from multicoil.errors import DataError, SliceError
from multicoil.index import build_index, kept_slices
from multicoil.normalize import NORMALIZE_TYPES, normalize_kspace
from utils.augment import AUGMENT_KEYS, augment_acquisition, augment_slice
from utils.common import check_setting, finite_above
from utils.mri import crop_kspace, sense_adjoint

log = logging.getLogger(__name__)


class MultiCoilSliceDataset(Dataset):
    """Slices of a folder of fastMRI-layout multi-coil files with their coil sensitivities.

    Args:
        kspace_root: folder of `.h5` files with `kspace` `[slices, coils, H, W]`.
        maps_root: folder of `.h5` files with the same names and `s_maps` (`datasets.py` says which shapes).
        config: reads `data.image_size`, `data.normalize_type`, `data.normalize_coeff`.
        skip_slices: leave out the first slices of every volume (see `kept_slices`).
        skip_broken: leave broken files out with a warning instead of raising `DataError`, and broken slices
            (unreadable, or k-space or maps with NaN or Inf) with a one-line log warning (the item is `None`, which
            `collate_multicoil` drops).
        augment: augment each slice (`utils/augment.py`) with the settings of `data.augment`, drawing from a
            generator seeded by `(config.seed, epoch, index)` (`set_epoch` sets the epoch).

    Items are dicts: `kspace` complex64 `[C, S, S]` (S = `data.image_size`; cropped in the image domain, then
    augmented and normalised), `maps` complex64 `[C, S, S]` (cropped), `fname` (file stem), `slice` (index in
    the volume). A slice that cannot be read or holds non-finite k-space or maps raises a `SliceError` naming the
    file and slice (`None` with `skip_broken`); in a DataLoader worker the error is returned as the item instead,
    and `collate_multicoil` and `SliceLoader` carry it to the main process, where it is raised.
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

    @staticmethod
    def _read(path: str, key: str, slice_idx: int, region: tuple = ()) -> np.ndarray:
        """`f[key][slice_idx, *region]` of an `.h5` file, checked to be finite; a `SliceError` when it cannot be read
        or holds NaN or Inf."""
        try:
            with h5py.File(path, "r") as f:
                array = f[key][(slice_idx,) + region]
        except (OSError, KeyError) as err:
            raise SliceError(path, key, slice_idx, f"cannot be read ({err})",
                             "the file changed or is damaged: replace it") from err
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise SliceError(path, key, slice_idx, f"holds {bad} non-finite values (NaN or Inf)",
                             "repair or remove the file")
        return array

    def __getitem__(self, idx: int) -> dict | SliceError | None:
        try:
            return self._load(idx)
        except SliceError as err:
            if self.skip_broken:
                log.warning("skipping a broken slice: %s", err)
                return None
            if get_worker_info() is not None:  # a worker's raise would reach the loader as traceback text only
                return err
            raise

    def _load(self, idx: int) -> dict:
        volume_idx, slice_idx = self.slices[idx]
        volume = self.volumes[volume_idx]
        size = (self.image_size, self.image_size)
        # Read the maps' centre crop only; k-space needs the full matrix for the image-domain crop.
        h, w = volume.maps_shape[2:]
        top, left = (h - size[0]) // 2, (w - size[1]) // 2
        maps = self._read(volume.maps_path, "s_maps", slice_idx, (slice(None), slice(top, top + size[0]),
                                                                  slice(left, left + size[1])))
        kspace = self._read(volume.kspace_path, "kspace", slice_idx)
        maps = torch.from_numpy(maps.astype(np.complex64, copy=False))
        kspace = crop_kspace(torch.from_numpy(kspace.astype(np.complex64, copy=False)), size)
        if self.augment is not None:
            kspace, maps = self._augment(idx, kspace, maps)
        kspace = normalize_kspace(kspace, maps, self.normalize_type, self.normalize_coeff)
        return {"kspace": kspace, "maps": maps, "fname": volume.name, "slice": slice_idx}


def collate_multicoil(batch: list[dict | SliceError | None]) -> dict | SliceError | None:
    """Stack items into a batch, zero-padding the coil dimension to the largest coil count of the batch.

    Zero maps and zero k-space add nothing to `Aᴴ` and are kept at zero by `A`, so padded coils leave every SENSE
    operation unchanged and files with different coil counts (fastMRI brain) batch together. `None` items (broken
    slices skipped by `data.skip_broken`) are left out.

    Returns:
        dict with `kspace`, `maps` complex64 `[B, C_max, H, W]`, `fname` list of str, `slice` int64 `[B]`; `None`
        when every item was skipped; the first `SliceError` item itself (a worker's failed slice, which
        `SliceLoader` raises in the main process).
    """
    failed = next((item for item in batch if isinstance(item, SliceError)), None)
    if failed is not None:
        return failed
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


class SliceLoader(DataLoader):
    """A DataLoader of `MultiCoilSliceDataset` batches collated by `collate_multicoil` that raises, in the main
    process, the `SliceError` a worker handed over as a batch (a worker's own raise would arrive as the text of its
    traceback; the error pickles whole, so it arrives with its fields and one-line message)."""

    def __init__(self, dataset: MultiCoilSliceDataset, **kwargs):
        super().__init__(dataset, collate_fn=collate_multicoil, **kwargs)

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, SliceError):
                raise batch
            yield batch


def first_slices(dataset: MultiCoilSliceDataset, count: int) -> dict:
    """The first `count` usable slices of `dataset` in file order as one batch (`collate_multicoil`), read in this
    process; broken slices skipped by `skip_broken` are passed over. A `DataError` when none is usable."""
    items = []
    for idx in range(len(dataset)):
        item = dataset[idx]
        if item is not None:
            items.append(item)
        if len(items) == count:
            break
    if not items:
        raise DataError(f"every slice in {dataset.kspace_root} is broken; replace the files")
    return collate_multicoil(items)
