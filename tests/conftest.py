"""Shared fixtures: tiny files in the exact fastMRI multi-coil layout, an isolated index cache, and the float64
numpy reference of the centred orthonormal FFT pair (`from conftest import np_fft2c, np_ifft2c`)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

# One OpenBLAS thread (before numpy loads): sigpy's ESPIRiT is 3–20× slower with threaded OpenBLAS next to torch's
# OpenMP threads on a small CPU, and the tests' small arrays gain nothing from BLAS threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def np_fft2c(x: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2-D FFT over the last two axes: `fftshift(fft2(ifftshift(x), norm="ortho"))`."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def np_ifft2c(k: np.ndarray) -> np.ndarray:
    """Inverse of `np_fft2c`."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def write_fastmri_kspace(path: str, kspace: np.ndarray, patient_id: str = "anon") -> None:
    """Write `kspace` `[S, C, H, W]` as a fastMRI multi-coil file: `kspace` complex64, `ismrmrd_header` bytes,
    attributes `acquisition`, `max`, `norm`, `patient_id` (written here with h5py only, independent of the project)."""
    image = np.sqrt(np.sum(np.abs(np.fft.ifft2(kspace)) ** 2, axis=1))
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace.astype(np.complex64))
        f.create_dataset("ismrmrd_header", data=np.bytes_(b'<?xml version="1.0"?><ismrmrdHeader/>'))
        f.attrs.update({"acquisition": "CORPD_FBK", "max": float(image.max()), "norm": float(np.linalg.norm(image)),
                        "patient_id": patient_id})


def write_maps(path: str, maps: np.ndarray) -> None:
    """Write coil sensitivities `[S, C, h, w]` as dataset `s_maps` (complex64)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("s_maps", data=maps.astype(np.complex64))


@dataclass
class FastMRIFolder:
    """A k-space folder and its `<root>_maps` folder, with the arrays written (by file stem)."""

    root: str
    maps_root: str
    kspace: dict = field(default_factory=dict)
    maps: dict = field(default_factory=dict)


@pytest.fixture
def make_fastmri(tmp_path):
    """Factory writing random multi-coil files: `make(name="train", files=2, slices=3, coils=4, shape=(64, 48),
    maps_shape=None, seed=0)` → `FastMRIFolder`. `coils` may be a list (one count per file); `maps_shape` is the
    per-coil maps size (default: the k-space matrix)."""

    def make(name: str = "train", files: int = 2, slices: int = 3, coils=4, shape=(64, 48), maps_shape=None,
             seed: int = 0) -> FastMRIFolder:
        rng = np.random.default_rng(seed)
        folder = FastMRIFolder(str(tmp_path / name), str(tmp_path / f"{name}_maps"))
        os.makedirs(folder.root)
        os.makedirs(folder.maps_root)
        for i in range(files):
            c = coils[i] if isinstance(coils, (list, tuple)) else coils
            kspace = (rng.standard_normal((slices, c) + tuple(shape))
                      + 1j * rng.standard_normal((slices, c) + tuple(shape))).astype(np.complex64)
            m_shape = tuple(maps_shape or shape)
            maps = (rng.standard_normal((slices, c) + m_shape)
                    + 1j * rng.standard_normal((slices, c) + m_shape)).astype(np.complex64)
            maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=1, keepdims=True))
            stem = f"file{1000 + i}"
            write_fastmri_kspace(os.path.join(folder.root, stem + ".h5"), kspace, patient_id=stem)
            write_maps(os.path.join(folder.maps_root, stem + ".h5"), maps)
            folder.kspace[stem], folder.maps[stem] = kspace, maps
        return folder

    return make


@pytest.fixture(autouse=True)
def _isolated_index_cache(tmp_path_factory, monkeypatch):
    """Keep the dataset's slice-index cache out of the user's ~/.cache during tests."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow end-to-end test; run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def one_thread(monkeypatch):
    """One intra-op thread here and in subprocesses: on a small shared CPU, OpenMP threads competing with other
    processes make each step up to ten times slower (torchrun also gives each process one thread)."""
    import torch  # noqa: PLC0415 - only these tests need it at fixture time

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> str:
    """12 training and 2 validation phantom slices of 32×32 with 2–3 coils, written by the project's generator."""
    import subprocess  # noqa: PLC0415

    out = str(tmp_path_factory.mktemp("phantom"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "data_prepare/generate_smaps_phantom.py", "--out", out, "--train", "12",
                    "--val", "2", "--size", "32", "--coils", "2", "3", "--precision", "0"],
                   cwd=root, check=True, capture_output=True)
    return out
