"""Simulate a multi-coil k-space dataset in the fastMRI layout from magnitude images.

    python data_prepare/simulate_multicoil.py brain_T1.nii.gz --out data/sim/train --slices 60:120:4
    python data_prepare/simulate_multicoil.py scans/*.png --out data/sim/test --coils 8 --snr-db 30

Inputs: NIfTI volumes (`.nii`, `.nii.gz`, read with nibabel, reoriented to RAS and sliced along `--axis`, default
2 (axial), each slice rotated so that anterior is up), PNG/TIFF images (a multi-page TIFF is a stack; colour is
converted to grey) and `.npy` arrays (`[H, W]` or a stack sliced along `--axis`, default 0). Each input file gives one
volume `<out>/<stem>.h5` (`kspace` `[slices, coils, H, W]`) with its sensitivities in `<out>_maps/<stem>.h5`.
Per volume: magnitudes scaled to [0, 1] (by the volume maximum), NIfTI pixels resampled to square, each slice
fitted into n × n (`--resize fit`: scaled to fit, then zero-padded; `crop`: centre crop / zero pad without
resampling), multiplied by a random smooth phase, zero-padded to the acquired matrix H × W (`--oversample`),
multiplied by the coil sensitivities (`--coils`, `--layout`, `--coil-radius`, over the whole acquired field of
view), Fourier transformed, and optionally given complex noise (`--snr-db` or `--noise-peak`, correlated between
coils with `--noise-correlation`); the stored maps are the true ones or ESPIRiT estimates (`--maps`).
`--acquisition fastmri` is a fastMRI-like brain scan (2× readout oversampling, 8 coils around the whole field of
view, noise at 1 % of the brightest coil image, ESPIRiT maps from the whole matrix), `--acquisition project` the
simulator of the bundled brain set. Random choices follow `--seed` and the file's position.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage.transform import resize  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data_prepare.espirit import BACKENDS, espirit_maps  # noqa: E402
from data_prepare.fastmri_io import write_kspace_file, write_maps_file  # noqa: E402
from utils.augment import smooth_phase  # noqa: E402
from utils.coils import LAYOUTS, add_noise, coil_kspace, coil_maps  # noqa: E402
from utils.mri import crop_kspace  # noqa: E402

NIFTI = (".nii", ".nii.gz")
IMAGES = (".png", ".tif", ".tiff")
MAPS = ("true", "espirit", "espirit-crop")



def _stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in NIFTI + IMAGES + (".npy",):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def _read(reader, path: str, kind: str):
    """`reader(path)`, with a reader's own error for a damaged or mistyped file (nibabel's ImageFileError, a
    truncated gzip stream, a short PNG header, ...) raised as ValueError naming the format; a file that is missing or
    may not be read keeps its OSError, a volume too large for memory its MemoryError."""
    try:
        return reader(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - every reader fails in its own way on a damaged file
        raise ValueError(f"not a readable {kind} file ({type(err).__name__}: {err}); check that it was copied "
                         f"whole and that its extension says what it is") from err


def load_stack(path: str, axis: int | None) -> tuple[np.ndarray, tuple[float, float]]:
    """Read a magnitude image or stack as float64 `[S, H, W]` with its in-plane pixel spacing `(dy, dx)`."""
    lower = path.lower()
    if lower.endswith(NIFTI):
        import nibabel  # noqa: PLC0415 - only NIfTI inputs need it

        def read(name):
            volume = nibabel.as_closest_canonical(nibabel.load(name))
            return np.asarray(volume.get_fdata()), volume.header.get_zooms()[:3]

        data, zooms = _read(read, path, "NIfTI")
        if data.ndim == 2:
            data, zooms = data[:, :, None], tuple(zooms[:2]) + (1.0,)
        if data.ndim == 4 and data.shape[3] == 1:  # one volume of a 4-D series
            data = data[..., 0]
        if data.ndim != 3:
            raise ValueError(f"a 2-D or 3-D NIfTI volume is needed, got shape {data.shape}")
        axis = 2 if axis is None else axis
        plane = [a for a in range(3) if a != axis]
        # Slice, then rotate each (first-axis, second-axis) plane by 90° so that anterior/superior is up.
        stack = np.rot90(np.moveaxis(data, axis, 0), axes=(1, 2))
        return stack, (float(zooms[plane[1]]), float(zooms[plane[0]]))
    if lower.endswith(IMAGES):
        from skimage import color, io  # noqa: PLC0415

        data = np.asarray(_read(io.imread, path, "image"), np.float64)
        if data.ndim >= 3 and data.shape[-1] in (3, 4) and min(data.shape[-3:-1]) > 4:  # colour, not a stack
            data = color.rgb2gray(data[..., :3])
        return (data[None] if data.ndim == 2 else data), (1.0, 1.0)
    if lower.endswith(".npy"):
        data = np.abs(_read(np.load, path, ".npy")).astype(np.float64)
        if data.ndim == 2:
            return data[None], (1.0, 1.0)
        if data.ndim != 3:
            raise ValueError(f"a 2-D image or 3-D stack is needed, got shape {data.shape}")
        return np.moveaxis(data, 0 if axis is None else axis, 0), (1.0, 1.0)
    raise ValueError(f"unsupported file type; use NIfTI ({', '.join(NIFTI)}), {', '.join(IMAGES)} or .npy")


def select_slices(spec: str, count: int) -> list[int]:
    """Slice indices from `all`, a Python-style range `start:stop[:step]` or a list `i,j,k`."""
    if spec == "all":
        return list(range(count))
    try:
        if ":" in spec:
            chosen = list(range(count))[slice(*(int(p) if p else None for p in spec.split(":")))]
        else:
            chosen = [int(p) for p in spec.split(",")]
    except (TypeError, ValueError) as err:  # not whole numbers, or more than three parts of a range
        raise ValueError(f"slices {spec!r} are not all, start:stop[:step] or a list i,j,k of whole numbers") from err
    if ":" not in spec and any(not 0 <= i < count for i in chosen):
        raise ValueError(f"slices {spec} are not all in 0…{count - 1}")
    if not chosen:
        raise ValueError(f"slices {spec!r} select nothing from {count} slices")
    return chosen


def fit_to_size(image: np.ndarray, spacing: tuple[float, float], size: int, mode: str) -> np.ndarray:
    """One magnitude slice `[H, W]` → `[size, size]`: square pixels, then `fit` (scale, pad) or `crop` (crop, pad)."""
    finest = min(spacing)
    shape = (max(1, round(image.shape[0] * spacing[0] / finest)), max(1, round(image.shape[1] * spacing[1] / finest)))
    if mode == "fit":
        scale = size / max(shape)
        shape = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
    if shape != image.shape:
        image = resize(image, shape, order=1, anti_aliasing=True, preserve_range=True)
    out = np.zeros((size, size))
    h, w = min(size, image.shape[0]), min(size, image.shape[1])
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    out_top, out_left = (size - h) // 2, (size - w) // 2
    out[out_top:out_top + h, out_left:out_left + w] = image[top:top + h, left:left + w]
    return out


@dataclass(frozen=True)
class Acquisition:
    """How a magnitude image becomes multi-coil k-space (module docstring).

    `oversample` = (readout, phase-encode) factors of the acquired matrix over the n × n image (fastMRI: readout
    2×, phase encode ≈ 1.15×): the k-space holds the whole matrix, which the loader crops back to n × n in the image
    domain; the coils surround the whole acquired field of view. The noise level is `snr_db` (mean power) or
    `noise_peak` (a fraction of the brightest coil image), `noise_correlation` between neighbouring coils. `maps`:
    `true` (the simulated sensitivities), `espirit` (estimated from the `acs` central columns of the whole acquired
    matrix) or `espirit-crop` (of the n × n crop), by `maps_backend` (sigpy or bart).
    """

    coils: int = 12
    layout: str = "birdcage"
    coil_radius: float = 1.5
    oversample: tuple[float, float] = (1.0, 1.0)
    snr_db: float | None = None
    noise_peak: float | None = None
    noise_correlation: float = 0.0
    max_phase: float = 1.0
    maps: str = "true"
    maps_backend: str = "sigpy"
    acs: int = 24

    def __post_init__(self):
        if self.maps not in MAPS:
            raise ValueError(f"unknown maps {self.maps!r}; choose one of {list(MAPS)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown coil layout {self.layout!r}; choose one of {list(LAYOUTS)}")
        if self.coils < 1 or min(self.oversample) < 1:
            raise ValueError(f"coils must be >= 1 and oversampling factors >= 1, got {self.coils}, {self.oversample}")
        if self.snr_db is not None and self.noise_peak is not None:
            raise ValueError("give the noise as snr_db or as noise_peak, not both")

    def matrix(self, n: int) -> tuple[int, int]:
        """The acquired matrix `(H, W)` of an n × n image (even sizes, at least n)."""
        return tuple(max(n, 2 * int(round(n * f / 2))) for f in self.oversample)


# Named acquisitions of the shift benchmark and the brain set: the project's simulator, and one like a fastMRI
# brain scan (2× readout oversampling, coils around the whole field of view, noise at 1 % of the brightest coil
# image, ESPIRiT maps from the whole matrix).
ACQUISITIONS = {
    "project": Acquisition(coils=8, coil_radius=1.5, snr_db=40.0, maps="espirit"),
    "fastmri": Acquisition(coils=8, coil_radius=1.2, oversample=(2.0, 1.15), noise_peak=0.01, maps="espirit"),
}


def _pad_to(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-pad `[S, n, n]` images to `[S, *shape]`, centred as `utils.mri.center_crop` crops."""
    out = np.zeros(images.shape[:1] + tuple(shape), images.dtype)
    top, left = (shape[0] - images.shape[1]) // 2, (shape[1] - images.shape[2]) // 2
    out[:, top:top + images.shape[1], left:left + images.shape[2]] = images
    return out


def simulate_volume(magnitude: np.ndarray, rng: np.random.Generator,
                    acquisition: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """Magnitudes `[S, n, n]` in [0, 1] → (k-space `[S, C, H, W]`, maps `[S, C, H, W]` or `[S, C, n, n]` for
    `espirit-crop`), complex64, `(H, W) = acquisition.matrix(n)`."""
    n = magnitude.shape[-1]
    shape = acquisition.matrix(n)
    phase = np.exp(1j * smooth_phase(magnitude.shape[1:], rng, acquisition.max_phase))
    image = _pad_to(magnitude * phase, shape)
    maps = coil_maps(acquisition.layout, acquisition.coils, shape, acquisition.coil_radius)
    kspace = coil_kspace(image, maps)
    if acquisition.snr_db is not None or acquisition.noise_peak is not None:
        kspace = add_noise(kspace, acquisition.snr_db, rng, peak_fraction=acquisition.noise_peak,
                           correlation=acquisition.noise_correlation)
    if acquisition.maps == "true":
        return kspace, np.broadcast_to(maps, kspace.shape).copy()
    source = kspace if acquisition.maps == "espirit" else crop_kspace(torch.from_numpy(kspace), (n, n)).numpy()
    return kspace, np.stack([espirit_maps(k, acs=acquisition.acs, backend=acquisition.maps_backend) for k in source])


def acquisition_from_args(args) -> Acquisition:
    """The named `--acquisition` (default: 12 birdcage coils, noiseless, true maps) with the options given."""
    base = ACQUISITIONS[args.acquisition] if args.acquisition else Acquisition()
    given = {field: getattr(args, field) for field in ("coils", "layout", "coil_radius", "max_phase",
                                                       "noise_correlation", "maps", "maps_backend", "acs")
             if getattr(args, field) is not None}
    if args.oversample is not None:
        given["oversample"] = tuple(args.oversample)
    if args.snr_db is not None or args.noise_peak is not None:
        given.update(snr_db=args.snr_db, noise_peak=args.noise_peak)
    return replace(base, **given)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="NIfTI, PNG/TIFF or .npy files")
    parser.add_argument("--out", required=True, help="k-space folder; maps go to <out>_maps")
    parser.add_argument("--slices", default="all", help="all (default), start:stop[:step], or i,j,k")
    parser.add_argument("--axis", type=int, default=None, help="slice axis of 3-D inputs (NIfTI 2, .npy/TIFF 0)")
    parser.add_argument("--size", type=int, default=320, help="output matrix n×n (default 320)")
    parser.add_argument("--resize", choices=("fit", "crop"), default="fit", help="fit (default) or crop")
    parser.add_argument("--acquisition", choices=sorted(ACQUISITIONS), default=None,
                        help="start from a named acquisition (project, fastmri); the options below override it")
    parser.add_argument("--coils", type=int, default=None, help="number of coils (default 12)")
    parser.add_argument("--layout", choices=LAYOUTS, default=None, help="coil layout (default birdcage)")
    parser.add_argument("--coil-radius", type=float, default=None,
                        help="coil ring radius / half the acquired FOV (default 1.5)")
    parser.add_argument("--oversample", type=float, nargs=2, default=None, metavar=("READOUT", "PHASE"),
                        help="acquired matrix / image size along readout and phase encode (default 1 1; fastMRI "
                             "2 1.15); the loader crops back in the image domain")
    parser.add_argument("--max-phase", type=float, default=None, help="smooth phase amplitude, radians (default 1)")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--snr-db", type=float, default=None, help="complex noise at this SNR of mean power")
    noise.add_argument("--noise-peak", type=float, default=None,
                       help="complex noise at this fraction of the brightest coil image (fastMRI-like: 0.01)")
    parser.add_argument("--noise-correlation", type=float, default=None, help="coil noise correlation (default 0)")
    parser.add_argument("--maps", choices=MAPS, default=None,
                        help="stored maps: true (default), espirit (from the whole matrix) or espirit-crop")
    parser.add_argument("--maps-backend", choices=BACKENDS, default=None, help="ESPIRiT backend (default sigpy)")
    parser.add_argument("--acs", type=int, default=None, help="ESPIRiT calibration columns (default 24)")
    parser.add_argument("--precision", type=float, default=0.0,
                        help="round stored values to about this fraction of their rms and compress (default 0: "
                             "exact float32)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = parser.parse_args(argv)
    if args.size < 8:
        parser.error("--size must be >= 8")
    try:
        acquisition = acquisition_from_args(args)
    except ValueError as err:
        parser.error(str(err))

    maps_dir = os.path.normpath(args.out) + "_maps"
    for index, path in enumerate(tqdm(args.inputs, desc="simulate", unit="file")):
        try:
            stack, spacing = load_stack(path, args.axis)
            stack = np.nan_to_num(np.abs(stack))[select_slices(args.slices, len(stack))]
        except (OSError, ValueError) as err:
            parser.error(f"{path}: {err}")
        peak = stack.max()
        if peak <= 0:
            parser.error(f"{path}: the selected slices are all zero")
        magnitude = np.stack([fit_to_size(s / peak, spacing, args.size, args.resize) for s in stack])
        rng = np.random.default_rng([args.seed, index])
        kspace, maps = simulate_volume(magnitude, rng, acquisition)
        stem = _stem(path)
        provenance = {"source": os.path.abspath(path), "seed": args.seed, "acquisition": repr(acquisition)}
        compress = args.precision > 0
        write_kspace_file(os.path.join(args.out, stem + ".h5"), kspace, acquisition="SIMULATED",
                          patient_id=stem, recon_size=args.size, precision=args.precision, compress=compress,
                          attrs=provenance)
        write_maps_file(os.path.join(maps_dir, stem + ".h5"), maps, precision=args.precision, compress=compress,
                        attrs=provenance)
        tqdm.write(f"{path}: {len(stack)} slices × {acquisition.coils} coils -> {os.path.join(args.out, stem + '.h5')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
