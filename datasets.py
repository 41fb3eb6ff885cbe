"""Multi-coil MRI slices from fastMRI-layout `.h5` files: the data sets and loaders of a config, one entry point per
use, and the names the published layout imports from here.

A dataset is a folder of k-space files and a folder of coil-sensitivity files with the same file names:

    <kspace_root>/<name>.h5   dataset `kspace`  complex [slices, coils, H, W]  (centred k-space, fastMRI layout)
    <maps_root>/<name>.h5     dataset `s_maps`  complex [slices, coils, h, w]  (image domain)

The maps have the k-space matrix (`h, w = H, W`) or are already cropped (`data.image_size ≤ h ≤ H`, same for w);
`data_prepare/generate_smaps_fastMRI.py` writes them. Each item is one slice, centre-cropped in the image domain to
`data.image_size` and normalised (docs/ARCHITECTURE.md, "The mathematics"). The parts live in the `multicoil`
package (errors, normalisation, folders, the cached slice index, the `Dataset`); this module reads the config.

Entry points:
    `make_dataset(config, mode)`            the slices of a split (`train`, `eval`, `test`)
    `train_loader(dataset, config, epoch)`  the training batches of one epoch (seeded, sharded, resumable)
    `ordered_loader(dataset, config, n)`    batches in file order (reconstruction, validation)
    `first_slices(dataset, count)`          the first slices as one batch (the held-out batch, tuning)
    `get_dataset(config, mode)`             the published call: `make_dataset` with its loader
"""
from __future__ import annotations

import itertools

import torch
from torch.utils.data import DistributedSampler

from multicoil.dataset import MultiCoilSliceDataset, SliceLoader, collate_multicoil, first_slices
from multicoil.errors import DataError, SliceError
from multicoil.folders import (BUNDLED_SETS, check_regular, data_command, default_maps_root, list_h5_files,
                               missing_folder_hint)
from multicoil.index import Volume, build_index, index_cache_path, kept_slices
from multicoil.normalize import NORMALIZE_TYPES, normalize_kspace
from utils.common import derived_seed

__all__ = ["BUNDLED_SETS", "DATASHIFT_ALIASES", "MODES", "NORMALIZE_TYPES", "DataError", "EpochSampler",
           "MultiCoilSliceDataset", "SliceError", "Volume", "build_index", "check_regular", "collate_multicoil",
           "data_command", "default_maps_root", "first_slices", "get_dataset", "index_cache_path", "kept_slices",
           "list_h5_files", "make_dataset", "missing_folder_hint", "normalize_kspace", "ordered_loader", "train_loader"]

MODES = ("train", "eval", "test")
DATASHIFT_ALIASES = {"photom": "phantom"}  # the published quick start's folder name


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


def get_dataset(config, mode: str) -> SliceLoader:
    """DataLoader of the training (`train`), validation (`eval`) or reconstruction (`test`) slices.

    - `train`: `data.root` / `data.maps_root`, first `training.skip_slices` slices of each volume left out,
      augmented (`data.augment`); the loader of epoch 0 made by `train_loader`, which makes every epoch's loader.
    - `eval`: `data.eval_root` / `data.eval_maps_root`, slices skipped as for training, in file order,
      `training.batch_size` (its first batch holds training's held-out slices, which `first_slices` reads).
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


def ordered_loader(dataset: MultiCoilSliceDataset, config, batch_size: int, indices=None) -> SliceLoader:
    """Batches of `batch_size` slices of `dataset` taken in the order of `indices` (default: every slice in file
    order), collated by `collate_multicoil`; `training.num_workers` workers, `pin_memory` on CUDA."""
    return SliceLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=int(config.training.num_workers),
                       pin_memory=str(config.device).startswith("cuda"))


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


def train_loader(dataset: MultiCoilSliceDataset, config, epoch: int, skip_batches: int = 0) -> SliceLoader:
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
    return SliceLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=int(config.training.num_workers),
                       pin_memory=str(config.device).startswith("cuda"), drop_last=True,
                       generator=torch.Generator().manual_seed(derived_seed(seed, epoch, rank)))
