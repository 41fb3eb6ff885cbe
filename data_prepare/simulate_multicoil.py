"""Simulate a multi-coil k-space dataset in the fastMRI layout from magnitude images.

    python data_prepare/simulate_multicoil.py brain_T1.nii.gz --out data/sim/train --slices 60:120:4
    python data_prepare/simulate_multicoil.py scans/*.png --out data/sim/test --coils 8 --snr-db 30

Inputs: NIfTI volumes (`.nii`, `.nii.gz`, read with nibabel, reoriented to RAS and sliced along `--axis`, default
2 (axial), each slice rotated so that anterior is up), PNG/TIFF images (a multi-page TIFF is a stack; colour is
converted to grey) and `.npy` arrays (`[H, W]` or a stack sliced along `--axis`, default 0). Each input file gives one
volume `<out>/<stem>.h5` (`kspace` `[slices, coils, n, n]`) with its sensitivities in `<out>_maps/<stem>.h5`.
Per volume: magnitudes scaled to [0, 1] (by the volume maximum), NIfTI pixels resampled to square, each slice
fitted into n × n (`--resize fit`: scaled to fit, then zero-padded; `crop`: centre crop / zero pad without
resampling), multiplied by a random smooth phase, by birdcage coil sensitivities (`--coils`), Fourier transformed,
and optionally given complex noise at `--snr-db`. Random choices follow `--seed` and the file's position.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from skimage.transform import resize  # noqa: E402
from tqdm import tqdm  # noqa: E402

from utils.coils import add_noise, birdcage_sensitivities, coil_kspace  # noqa: E402
from data_prepare.fastmri_io import write_kspace_file, write_maps_file  # noqa: E402
from utils.augment import smooth_phase  # noqa: E402

NIFTI = (".nii", ".nii.gz")
IMAGES = (".png", ".tif", ".tiff")


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in NIFTI + IMAGES + (".npy",):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def load_stack(path: str, axis: int | None) -> tuple[np.ndarray, tuple[float, float]]:
    """Read a magnitude image or stack as float64 `[S, H, W]` with its in-plane pixel spacing `(dy, dx)`."""
    lower = path.lower()
    if lower.endswith(NIFTI):
        import nibabel  # noqa: PLC0415 - only NIfTI inputs need it

        volume = nibabel.as_closest_canonical(nibabel.load(path))
        data, zooms = np.asarray(volume.get_fdata()), volume.header.get_zooms()[:3]
        if data.ndim == 2:
            data, zooms = data[:, :, None], tuple(zooms[:2]) + (1.0,)
        if data.ndim != 3:
            raise ValueError(f"a 2-D or 3-D NIfTI volume is needed, got shape {data.shape}")
        axis = 2 if axis is None else axis
        plane = [a for a in range(3) if a != axis]
        # Slice, then rotate each (first-axis, second-axis) plane by 90° so that anterior/superior is up.
        stack = np.rot90(np.moveaxis(data, axis, 0), axes=(1, 2))
        return stack, (float(zooms[plane[1]]), float(zooms[plane[0]]))
    if lower.endswith(IMAGES):
        from skimage import color, io  # noqa: PLC0415

        data = np.asarray(io.imread(path), np.float64)
        if data.ndim >= 3 and data.shape[-1] in (3, 4) and min(data.shape[-3:-1]) > 4:  # colour, not a stack
            data = color.rgb2gray(data[..., :3])
        return (data[None] if data.ndim == 2 else data), (1.0, 1.0)
    if lower.endswith(".npy"):
        data = np.abs(np.load(path)).astype(np.float64)
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
    if ":" in spec:
        chosen = list(range(count))[slice(*(int(p) if p else None for p in spec.split(":")))]
    else:
        chosen = [int(p) for p in spec.split(",")]
        if any(not 0 <= i < count for i in chosen):
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


def simulate_volume(magnitude: np.ndarray, rng: np.random.Generator, num_coils: int, coil_radius: float,
                    max_phase: float, snr_db: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Magnitudes `[S, n, n]` in [0, 1] → (k-space `[S, C, n, n]`, maps `[S, C, n, n]`), complex64."""
    phase = np.exp(1j * smooth_phase(magnitude.shape[1:], rng, max_phase))
    maps = birdcage_sensitivities(num_coils, magnitude.shape[1:], coil_radius)
    kspace = coil_kspace(magnitude * phase, maps)
    if snr_db is not None:
        kspace = add_noise(kspace, snr_db, rng)
    return kspace, np.broadcast_to(maps, kspace.shape).copy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="NIfTI, PNG/TIFF or .npy files")
    parser.add_argument("--out", required=True, help="k-space folder; maps go to <out>_maps")
    parser.add_argument("--slices", default="all", help="all (default), start:stop[:step], or i,j,k")
    parser.add_argument("--axis", type=int, default=None, help="slice axis of 3-D inputs (NIfTI 2, .npy/TIFF 0)")
    parser.add_argument("--size", type=int, default=320, help="output matrix n×n (default 320)")
    parser.add_argument("--resize", choices=("fit", "crop"), default="fit", help="fit (default) or crop")
    parser.add_argument("--coils", type=int, default=12, help="number of coils (default 12)")
    parser.add_argument("--coil-radius", type=float, default=1.5, help="birdcage radius / half FOV (default 1.5)")
    parser.add_argument("--max-phase", type=float, default=1.0, help="smooth phase amplitude, radians (default 1)")
    parser.add_argument("--snr-db", type=float, default=None, help="add complex noise at this SNR (default none)")
    parser.add_argument("--precision", type=float, default=0.0,
                        help="round stored values to about this fraction of their rms and compress (default 0: "
                             "exact float32)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = parser.parse_args(argv)
    if args.coils < 1 or args.size < 8:
        parser.error("--coils must be >= 1 and --size >= 8")

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
        kspace, maps = simulate_volume(magnitude, rng, args.coils, args.coil_radius, args.max_phase, args.snr_db)
        stem = _stem(path)
        provenance = {"source": os.path.abspath(path), "seed": args.seed,
                      "snr_db": "none" if args.snr_db is None else args.snr_db}
        compress = args.precision > 0
        write_kspace_file(os.path.join(args.out, stem + ".h5"), kspace, acquisition="SIMULATED",
                          patient_id=stem, recon_size=args.size, precision=args.precision, compress=compress,
                          attrs=provenance)
        write_maps_file(os.path.join(maps_dir, stem + ".h5"), maps, precision=args.precision, compress=compress,
                        attrs=provenance)
        tqdm.write(f"{path}: {len(stack)} slices × {args.coils} coils -> {os.path.join(args.out, stem + '.h5')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
