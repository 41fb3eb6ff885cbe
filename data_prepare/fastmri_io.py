"""Writing multi-coil files in the fastMRI layout.

k-space file: dataset `kspace` complex64 `[slices, coils, H, W]`, dataset `ismrmrd_header` (XML bytes), attributes
`acquisition`, `max`, `norm`, `patient_id` (as fastMRI's multi-coil files). Maps file: dataset `s_maps` complex64
`[slices, coils, h, w]`. Files are written under a temporary name and renamed, so a file that exists is complete.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import h5py
import numpy as np
import torch

from utils.atomic import atomic_path
from utils.mri import ifft2c, rss


def quantize(x: np.ndarray, precision: float) -> np.ndarray:
    """Round the real and imaginary parts of `x` to multiples of a power-of-two step near `precision · rms(x)`.

    Small values (the k-space periphery) then need few mantissa bits, so gzip stores them compactly; the
    rounding error is uniform with rms ≈ 0.41 · step per complex sample, in k-space and (orthonormal FFT) in the
    image. `precision <= 0` returns `x` as complex64 unchanged.
    """
    x = np.asarray(x, np.complex64)
    rms = float(np.sqrt(np.mean(np.abs(x) ** 2)))
    if precision <= 0 or rms == 0:
        return x
    step = np.float32(2.0 ** np.floor(np.log2(precision * rms)))
    return (np.round(x.real / step) * step + 1j * (np.round(x.imag / step) * step)).astype(np.complex64)


def ismrmrd_header(matrix: tuple[int, int], recon: tuple[int, int], num_coils: int, protocol: str) -> bytes:
    """A minimal ISMRMRD XML header: encoded matrix `matrix` (readout H × phase-encode W), recon matrix `recon`,
    1 mm pixels, Cartesian trajectory, phase-encode limits centred at W // 2 (what fastMRI's loaders read)."""
    (h, w), (rh, rw) = matrix, recon
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">\n'
        f'  <measurementInformation><protocolName>{protocol}</protocolName></measurementInformation>\n'
        f'  <acquisitionSystemInformation><receiverChannels>{num_coils}</receiverChannels>'
        '</acquisitionSystemInformation>\n'
        '  <encoding>\n'
        f'    <encodedSpace><matrixSize><x>{h}</x><y>{w}</y><z>1</z></matrixSize>'
        f'<fieldOfView_mm><x>{h}.0</x><y>{w}.0</y><z>1.0</z></fieldOfView_mm></encodedSpace>\n'
        f'    <reconSpace><matrixSize><x>{rh}</x><y>{rw}</y><z>1</z></matrixSize>'
        f'<fieldOfView_mm><x>{rh}.0</x><y>{rw}.0</y><z>1.0</z></fieldOfView_mm></reconSpace>\n'
        f'    <encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{w - 1}</maximum>'
        f'<center>{w // 2}</center></kspace_encoding_step_1></encodingLimits>\n'
        '    <trajectory>cartesian</trajectory>\n'
        '  </encoding>\n'
        '</ismrmrdHeader>\n'
    ).encode()


@contextlib.contextmanager
def _atomic_h5(path: str) -> Iterator[h5py.File]:
    """An `.h5` file opened for writing that replaces `path` once written without error (`utils/atomic.py`)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        yield f


def _store(f: h5py.File, key: str, data: np.ndarray, compress: bool) -> None:
    """Write complex64 `data` `[S, C, H, W]`, one chunk per slice when compressed (gzip + shuffle)."""
    if compress:
        f.create_dataset(key, data=data, chunks=(1,) + data.shape[1:], compression="gzip", compression_opts=4,
                         shuffle=True)
    else:
        f.create_dataset(key, data=data)


def write_kspace_file(path: str, kspace: np.ndarray, *, acquisition: str, patient_id: str,
                      recon_size: int = 320, precision: float = 0.0, compress: bool = False,
                      attrs: dict | None = None) -> None:
    """Write a fastMRI-layout multi-coil k-space file.

    Args:
        path: output `.h5` file.
        kspace: complex centred k-space `[slices, coils, H, W]`.
        acquisition, patient_id: the fastMRI attributes of the same names.
        recon_size: recon matrix recorded in the header (the image-domain crop the data are meant for).
        precision: store values rounded by `quantize` (0: exact float32).
        compress: gzip + shuffle, one chunk per slice.
        attrs: further attributes (provenance of synthetic data).

    `max` and `norm` are the maximum and the Frobenius norm of the root-sum-of-squares image of the whole volume.
    """
    kspace = quantize(kspace, precision)
    image = rss(ifft2c(torch.from_numpy(kspace))).numpy()
    with _atomic_h5(path) as f:
        _store(f, "kspace", kspace, compress)
        f.create_dataset("ismrmrd_header", data=np.bytes_(ismrmrd_header(
            kspace.shape[2:], (recon_size, recon_size), kspace.shape[1], acquisition)))
        f.attrs.update({"acquisition": acquisition, "max": float(image.max()),
                        "norm": float(np.linalg.norm(image)), "patient_id": patient_id, **(attrs or {})})


def write_maps_file(path: str, maps: np.ndarray, *, precision: float = 0.0, compress: bool = False,
                    attrs: dict | None = None) -> None:
    """Write coil sensitivities `[slices, coils, h, w]` (complex, image domain) as dataset `s_maps`
    (`precision`, `compress`: as for `write_kspace_file`)."""
    with _atomic_h5(path) as f:
        _store(f, "s_maps", quantize(maps, precision), compress)
        f.attrs.update(attrs or {})
