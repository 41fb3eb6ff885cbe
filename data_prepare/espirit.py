"""ESPIRiT coil sensitivity estimation with sigpy (`EspiritCalib`) or BART (`bart ecalib`).

Both backends take one slice of centred k-space `[C, H, W]`, calibrate from the central `acs × acs` region, keep one
set of maps, zero the maps where the ESPIRiT eigenvalue is below `crop`, and return complex64 `[C, H, W]` in one
phase convention (coil 0 real and non-negative, see `utils.coils.align_phase`), so that the two agree.

On the CPU, sigpy's calibration makes millions of tiny BLAS calls and runs 2–3× slower (up to 20× next to torch's
OpenMP threads on a small machine) with threaded OpenBLAS: start Python with `OPENBLAS_NUM_THREADS=1`, as the
`data_prepare` scripts do for themselves.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np
import sigpy
import sigpy.mri.app

from utils.coils import align_phase

BACKENDS = ("sigpy", "bart")


def bart_binary() -> str | None:
    """Path of the `bart` executable (`$TOOLBOX_PATH/bart` or on `PATH`), or None."""
    toolbox = os.environ.get("TOOLBOX_PATH")
    if toolbox and os.access(os.path.join(toolbox, "bart"), os.X_OK):
        return os.path.join(toolbox, "bart")
    return shutil.which("bart")


def sigpy_device(device: str = "auto") -> sigpy.Device:
    """sigpy device from `"auto"` (GPU 0 when cupy and a GPU are present, else CPU), `"cpu"` or a GPU index."""
    if device == "cpu":
        return sigpy.cpu_device
    if device == "auto":
        if sigpy.config.cupy_enabled:
            import cupy  # noqa: PLC0415 - optional dependency, present when cupy_enabled

            try:
                if cupy.cuda.runtime.getDeviceCount() > 0:
                    return sigpy.Device(0)
            except cupy.cuda.runtime.CUDARuntimeError:  # cupy installed, but no driver or GPU
                pass
        return sigpy.cpu_device
    if not device.isdigit():
        raise ValueError(f"device must be 'auto', 'cpu' or a GPU index, got {device!r}")
    if not sigpy.config.cupy_enabled:
        raise ValueError(f"device {device} asks for a GPU but cupy is not installed; use --device cpu")
    return sigpy.Device(int(device))


def acs_width(kspace: np.ndarray) -> int:
    """Number of contiguous sampled (non-zero) phase-encode columns around the centre column `W // 2`.

    Args:
        kspace: complex k-space `[C, H, W]`; a column counts as sampled when any coil or row is non-zero.
    """
    sampled = np.any(kspace != 0, axis=(0, 1))
    centre = len(sampled) // 2
    if not sampled[centre]:
        return 0
    left = centre - np.argmin(np.append(sampled[centre::-1], False))
    right = centre + np.argmin(np.append(sampled[centre:], False))
    return int(right - left - 1)


def write_cfl(base: str, array: np.ndarray) -> None:
    """Write `array` as BART's `<base>.hdr` / `<base>.cfl` (complex64, column-major)."""
    with open(base + ".hdr", "w") as f:
        f.write("# Dimensions\n" + " ".join(str(n) for n in array.shape) + "\n")
    np.asarray(array, np.complex64).ravel(order="F").tofile(base + ".cfl")


def read_cfl(base: str) -> np.ndarray:
    """Read BART's `<base>.hdr` / `<base>.cfl` into a complex64 array of the stored dimensions."""
    with open(base + ".hdr") as f:
        dims = [int(n) for n in f.read().splitlines()[1].split()]
    return np.fromfile(base + ".cfl", dtype=np.complex64).reshape(dims, order="F")


def _sigpy_maps(kspace: np.ndarray, acs: int, kernel: int, thresh: float, crop: float, device: str) -> np.ndarray:
    dev = sigpy_device(device)
    maps = sigpy.mri.app.EspiritCalib(kspace, calib_width=acs, thresh=thresh, kernel_width=kernel, crop=crop,
                                      device=dev, show_pbar=False).run()
    return sigpy.to_device(maps, sigpy.cpu_device)


def _bart_maps(kspace: np.ndarray, acs: int, kernel: int, thresh: float, crop: float) -> np.ndarray:
    binary = bart_binary()
    if binary is None:
        raise RuntimeError("the BART backend needs the `bart` executable: install it (Debian/Ubuntu: "
                           "`apt-get install bart`) or set TOOLBOX_PATH, or use the sigpy backend")
    num_coils, h, w = kspace.shape
    with tempfile.TemporaryDirectory(prefix="hfs_bart_") as tmp:
        # BART's layout is [x, y, z, coils].
        write_cfl(os.path.join(tmp, "ksp"), kspace.transpose(1, 2, 0)[:, :, None, :])
        # BART thresholds squared singular values (eigenvalues of AᴴA), sigpy singular values: pass thresh².
        command = [binary, "ecalib", "-m1", "-r", str(acs), "-k", str(kernel), "-t", str(thresh ** 2), "-c",
                   str(crop), os.path.join(tmp, "ksp"), os.path.join(tmp, "maps")]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed ({result.returncode}): {result.stderr.strip()}")
        maps = read_cfl(os.path.join(tmp, "maps"))
    return maps.reshape(h, w, num_coils).transpose(2, 0, 1)


def espirit_maps(kspace: np.ndarray, *, acs: int = 24, kernel: int = 6, thresh: float = 0.02, crop: float = 0.95,
                 backend: str = "sigpy", device: str = "auto") -> np.ndarray:
    """ESPIRiT sensitivities of one slice.

    Args:
        kspace: complex centred k-space `[C, H, W]`, fully sampled or undersampled with a fully sampled centre of
            at least `acs` columns (only the central `acs × acs` region is used).
        acs: side of the calibration region.
        kernel: ESPIRiT kernel width.
        thresh: singular-value threshold of the calibration matrix, relative to the largest (sigpy's convention;
            BART receives `thresh²`, its threshold on squared singular values).
        crop: maps are zeroed where the ESPIRiT eigenvalue is below this (0 keeps them everywhere).
        backend: `sigpy` or `bart`.
        device: sigpy device (`auto`, `cpu`, or a GPU index); BART runs on the CPU.

    Returns:
        complex64 maps `[C, H, W]`, unit norm over coils where not cropped, coil 0 real and non-negative.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown ESPIRiT backend {backend!r}; choose one of {list(BACKENDS)}")
    kspace = np.asarray(kspace, np.complex64)
    if kspace.ndim != 3:
        raise ValueError(f"ESPIRiT needs one slice of multi-coil k-space [C, H, W], got shape {kspace.shape}")
    if not kernel < acs <= min(kspace.shape[1:]):
        raise ValueError(f"the calibration region acs={acs} must be larger than the kernel ({kernel}) and fit the "
                         f"{kspace.shape[1]}×{kspace.shape[2]} matrix")
    start = kspace.shape[2] // 2 - acs // 2  # the calibration region, as sigpy and BART centre it
    if not np.any(kspace[:, :, start:start + acs] != 0, axis=(0, 1)).all():
        raise ValueError(f"the calibration region of {acs} centre columns includes unsampled columns: the data's "
                         f"fully sampled centre is {acs_width(kspace)} columns wide; use a smaller --acs")
    if backend == "sigpy":
        maps = _sigpy_maps(kspace, acs, kernel, thresh, crop, device)
    else:
        maps = _bart_maps(kspace, acs, kernel, thresh, crop)
    return align_phase(maps)
