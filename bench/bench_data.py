"""Data pipeline throughput: load + crop + normalise (slices/s) and ESPIRiT seconds per slice per backend.

    python bench/bench_data.py                       # 15 coils, 640×368 k-space → 320×320, both backends
    python bench/bench_data.py --slices 8 --backends sigpy

Writes temporary fastMRI-layout files (random k-space; the cost does not depend on the content) and times
`MultiCoilSliceDataset` item by item (one process) and through the DataLoader (`--workers`), after one warm-up pass
so the files sit in the page cache (the numbers exclude disk reads). ESPIRiT is timed on a 320×320 phantom slice.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# As the data_prepare scripts do: one BLAS thread for sigpy's ESPIRiT (see data_prepare/espirit.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import datasets  # noqa: E402
from configs.default_fastMRI_configs import get_default_configs  # noqa: E402
from data_prepare.espirit import bart_binary, espirit_maps, sigpy_device  # noqa: E402
from data_prepare.phantom import phantom_volume  # noqa: E402


def write_case(folder: str, maps_folder: str, slices: int, coils: int, matrix: tuple[int, int],
               maps_size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    os.makedirs(maps_folder, exist_ok=True)
    shape = (slices, coils) + matrix
    kspace = (rng.standard_normal(shape, np.float32) + 1j * rng.standard_normal(shape, np.float32)).astype(
        np.complex64)
    maps = np.exp(1j * rng.uniform(0, 6.28, (slices, coils) + maps_size)).astype(np.complex64) / np.sqrt(coils)
    with h5py.File(os.path.join(folder, "bench.h5"), "w") as f:
        f.create_dataset("kspace", data=kspace)
    with h5py.File(os.path.join(maps_folder, "bench.h5"), "w") as f:
        f.create_dataset("s_maps", data=maps)


def time_loading(root: str, maps_root: str, normalize_type: str, workers: int, image_size: int) -> tuple[float, float]:
    """(slices/s item by item in this process, slices/s through a DataLoader with `workers` workers, batch 4)."""
    config = get_default_configs()
    config.device, config.data.image_size, config.data.normalize_type = "cpu", image_size, normalize_type
    config.training.num_workers, config.training.batch_size, config.training.skip_slices = workers, 4, 0
    dataset = datasets.MultiCoilSliceDataset(root, maps_root, config)
    for i in range(len(dataset)):  # warm-up: page cache
        dataset[i]
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    single = len(dataset) / (time.perf_counter() - start)
    config.data.root, config.data.maps_root = root, maps_root
    loader = datasets.get_dataset(config, "train")
    next(iter(loader))  # start the workers
    start = time.perf_counter()
    count = sum(batch["kspace"].shape[0] for batch in loader)
    return single, count / (time.perf_counter() - start)


def time_espirit(backend: str, coils: int, size: int, repeats: int) -> float:
    kspace = phantom_volume(seed=0, size=size, num_slices=1, coils=(coils, coils))[0][0]
    espirit_maps(kspace, backend=backend)  # warm-up (numba compilation in sigpy)
    start = time.perf_counter()
    for _ in range(repeats):
        espirit_maps(kspace, backend=backend)
    return (time.perf_counter() - start) / repeats


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=16, help="slices in the timed file (default 16)")
    parser.add_argument("--coils", type=int, default=15, help="coils (default 15)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--espirit-repeats", type=int, default=2, help="ESPIRiT slices timed per backend")
    parser.add_argument("--backends", nargs="*", default=["sigpy", "bart"], help="ESPIRiT backends to time")
    args = parser.parse_args(argv)

    print(f"# {_cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")
    cases = [("640×368 k-space, maps 320×320", (640, 368), (320, 320)),
             ("640×368 k-space, maps 640×368", (640, 368), (640, 368)),
             ("320×320 k-space and maps", (320, 320), (320, 320))]
    print(f"\n| input ({args.coils} coils → 320×320) | normalize | slices/s, 1 process | slices/s, "
          f"DataLoader {args.workers} workers |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="hfs_bench_") as tmp:
        for i, (label, matrix, maps_size) in enumerate(cases):
            root, maps_root = os.path.join(tmp, f"k{i}"), os.path.join(tmp, f"m{i}")
            write_case(root, maps_root, args.slices, args.coils, matrix, maps_size)
            for normalize_type in datasets.NORMALIZE_TYPES:
                single, loader = time_loading(root, maps_root, normalize_type, args.workers, 320)
                print(f"| {label} | {normalize_type} | {single:.1f} | {loader:.1f} |", flush=True)

    print(f"\n| ESPIRiT backend | device | seconds per 320×320 slice, {args.coils} coils, ACS 24 |\n|---|---|---|")
    for backend in args.backends:
        if backend == "bart" and bart_binary() is None:
            print("| bart | - | not installed |")
            continue
        device = "CPU" if backend == "bart" or sigpy_device("auto").id < 0 else f"GPU {sigpy_device('auto').id}"
        seconds = time_espirit(backend, args.coils, 320, args.espirit_repeats)
        print(f"| {backend} | {device} | {seconds:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
