"""Shared fixtures: tiny files in the exact fastMRI multi-coil layout, an isolated index cache, the float64 numpy
reference of the centred orthonormal FFT pair, the high-pass projection and the data-consistency term
(`from tests.conftest import np_fft2c, np_dc, ...`), and `check_records` of a finished reconstruction folder."""
from __future__ import annotations

import csv
import glob
import json
import os
import sys
from dataclasses import dataclass, field

# One OpenBLAS thread (before numpy loads): sigpy's ESPIRiT is 3–20× slower with threaded OpenBLAS next to torch's
# OpenMP threads on a small CPU, and the tests' small arrays gain nothing from BLAS threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.io  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def np_fft2c(x: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2-D FFT over the last two axes: `fftshift(fft2(ifftshift(x), norm="ortho"))`."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def np_ifft2c(k: np.ndarray) -> np.ndarray:
    """Inverse of `np_fft2c`."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def to_c(x: np.ndarray) -> np.ndarray:
    """Real 2-channel images `[B, 2, H, W]` as complex `[B, H, W]`."""
    return x[:, 0] + 1j * x[:, 1]


def to_r(c: np.ndarray) -> np.ndarray:
    """Complex images `[B, H, W]` as real 2-channel `[B, 2, H, W]`."""
    return np.stack([c.real, c.imag], 1)


def np_hp(x: np.ndarray, lf: np.ndarray) -> np.ndarray:
    """High-pass projection `F⁻¹((1 − M_lf) F x)` of real 2-channel images with the low-frequency mask `lf`."""
    return to_r(np_ifft2c((1 - lf) * np_fft2c(to_c(x))))


def np_norm(v: np.ndarray) -> np.ndarray:
    """Per-sample Euclidean norm, shaped `[B, 1, 1, 1]`."""
    return np.sqrt((v.reshape(v.shape[0], -1) ** 2).sum(1))[:, None, None, None]


def np_dc(x: np.ndarray, y: np.ndarray, csm: np.ndarray, mask: np.ndarray, s: np.ndarray, w: float) -> np.ndarray:
    """Data-consistency term `Aᴴ(A x − y)` rescaled per sample to `w·‖s‖` (real 2-channel `x`, `s`)."""
    r = mask * np_fft2c(csm * to_c(x)[:, None]) - y
    d = to_r(np.sum(np.conj(csm) * np_ifft2c(mask * r), 1))
    return d / np_norm(d) * np_norm(s) * w


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


def np_psnr(truth: np.ndarray, recon: np.ndarray) -> float:
    """fastMRI PSNR of the magnitudes in dB (peak `max |truth|`)."""
    truth, recon = np.abs(truth).astype(np.float64), np.abs(recon).astype(np.float64)
    return float(10 * np.log10(truth.max() ** 2 / np.mean((recon - truth) ** 2)))


def check_records(out: str, slices: list[tuple[str, str]]) -> dict:
    """Check a finished reconstruction folder and return its summary: exactly the `(file, slice)` rows `slices` in
    metrics.csv, each row's PSNR that of its `.mat` images, the `.h5` volumes holding those magnitudes, the summary
    the mean of the rows, no temporaries left: the records agree with each other."""
    with open(os.path.join(out, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["fname"], r["slice"]) for r in rows] == slices
    volumes: dict[str, list] = {}
    for row in rows:
        mat = scipy.io.loadmat(os.path.join(out, f"recon_{row['fname']}_{row['slice']}.mat"))
        assert float(row["psnr"]) == pytest.approx(np_psnr(mat["ground_truth"], mat["recon"]), rel=1e-6)
        volumes.setdefault(row["fname"], []).append((int(row["slice"]), np.abs(mat["recon"])))
    for fname, stack in volumes.items():
        with h5py.File(os.path.join(out, f"{fname}.h5")) as f:
            assert list(f["slices"]) == [index for index, _ in stack]
            np.testing.assert_allclose(f["reconstruction"][()], np.stack([image for _, image in stack]), rtol=1e-6)
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["n_slices"] == len(slices) and summary["nfe"] == max(int(r["nfe"]) for r in rows)
    for key in ("nmse", "psnr", "ssim", "nmse_published", "psnr_published", "ssim_published", "zf_psnr", "residual",
                "zf_residual"):
        assert summary[key] == pytest.approx(np.mean([float(r[key]) for r in rows]), rel=1e-6), key
    assert not glob.glob(os.path.join(out, "*.tmp")) and not glob.glob(os.path.join(out, ".*.tmp"))
    return summary


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


def save_tiny_checkpoint(path: str, config, seed: int = 0) -> str:
    """Write the checkpoint of a fresh network of `config` (weights seeded by `seed`) at `path` as training writes it
    (model, EMA, optimizer, step 5, the config record), creating its folder; returns `path`."""
    import torch  # noqa: PLC0415 - only reconstruction tests need a checkpoint

    from models.ema import ExponentialMovingAverage  # noqa: PLC0415
    from runners.build import checkpoint_record, create_model  # noqa: PLC0415
    from utils.checkpoints import save_checkpoint  # noqa: PLC0415

    torch.manual_seed(seed)
    model = create_model(config)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_checkpoint(path, {"model": model, "ema": ExponentialMovingAverage(model.parameters(), 0.99),
                           "optimizer": torch.optim.Adam(model.parameters()), "step": 5,
                           "config": checkpoint_record(config)})
    return path


@pytest.fixture
def knee_test(make_fastmri, tmp_path):
    """`(config, folder)`: the tiny config (`configs/tiny.py`) reconstructing the `knee` test set `folder`, 2 files ×
    2 slices of 40×32 k-space with 3 coils, in 3 steps, masks written under `tmp_path/masks`, with the checkpoint of
    a fresh network at `tmp_path/ckpt/tiny.pth` (`sampling.checkpoint`)."""
    from configs.tiny import get_config  # noqa: PLC0415

    folder = make_fastmri("knee_test", files=2, slices=2, coils=3, shape=(40, 32))
    config = get_config()
    config.data.test_roots.knee = folder.root
    config.data.mask_root = str(tmp_path / "masks")
    config.sampling.datashift, config.sampling.N = "knee", 3
    config.sampling.checkpoint = save_tiny_checkpoint(str(tmp_path / "ckpt" / "tiny.pth"), config)
    return config, folder


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
