"""ESPIRiT coil sensitivity maps for every slice of every fastMRI multi-coil file in a folder.

    python data_prepare/generate_smaps_fastMRI.py --input data/fastMRI/knee/train
    python data_prepare/generate_smaps_fastMRI.py --input data/fastMRI/knee/test --backend bart

Each `<input>/<name>.h5` (`kspace` `[slices, coils, H, W]`) gives `<output>/<name>.h5` with `s_maps`
`[slices, coils, n, n]`: k-space is first centre-cropped to n × n in the image domain (`--crop-size`, default 320, as
the published preparation; 0 keeps the full matrix), then calibrated from its central `--acs` × `--acs` region
(default 24). Finished files are skipped, so a stopped run resumes; a file that fails is reported on one line and
the others go on (exit status 1 when any failed). `--mask` calibrates from undersampled data: k-space is multiplied
by the mask first, so only its fully sampled centre (at least `--acs` columns) is used, as at reconstruction time
with prospectively undersampled data. Backends: sigpy (`EspiritCalib`; a GPU through cupy when present) or BART
(`bart ecalib`, when the `bart` executable is installed: `apt-get install bart`).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# sigpy's ESPIRiT makes millions of tiny BLAS calls, 2–3× slower with threaded BLAS: one BLAS thread unless set.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data_prepare.espirit import BACKENDS, bart_binary, espirit_maps  # noqa: E402
from data_prepare.fastmri_io import write_maps_file  # noqa: E402
from datasets import check_regular, default_maps_root, list_h5_files  # noqa: E402
from utils.masks import load_mask  # noqa: E402
from utils.mri import crop_kspace  # noqa: E402


def read_mask(path: str) -> np.ndarray:
    """A sampling mask from `.mat` (key `mask`) or `.npy`, as float32 `[H, W]` (a 1-D `[W]` line is repeated)."""
    mask = load_mask(path) if path.endswith(".mat") else np.abs(np.load(path)).astype(np.float32)
    if mask.ndim == 1:
        return mask[None, :]
    if mask.ndim != 2:
        raise ValueError(f"mask {path} has shape {mask.shape}; a [H, W] or [W] mask is needed")
    return mask


def _finished(path: str, shape: tuple[int, ...]) -> bool:
    """True when `path` holds `s_maps` of `shape` (files are written atomically, so present means complete)."""
    try:
        with h5py.File(path, "r") as f:
            return "s_maps" in f and f["s_maps"].shape == shape
    except OSError:
        return False


def maps_for_file(kspace_path: str, maps_path: str, args: argparse.Namespace, mask: np.ndarray | None) -> bool:
    """Estimate and write the maps of one file; False when an up-to-date maps file exists already."""
    try:
        with h5py.File(kspace_path, "r") as f:
            if "kspace" not in f:
                raise ValueError(f"no 'kspace' dataset (it holds {sorted(f.keys())})")
            kspace = f["kspace"]
            if kspace.ndim != 4:
                raise ValueError(f"'kspace' has shape {kspace.shape}; multi-coil [slices, coils, H, W] is needed")
            num_slices, num_coils, h, w = kspace.shape
            size = (args.crop_size, args.crop_size) if args.crop_size else (h, w)
            if size[0] > h or size[1] > w:
                raise ValueError(f"the {h}×{w} matrix is smaller than --crop-size {args.crop_size}")
            if not args.overwrite and _finished(maps_path, (num_slices, num_coils) + size):
                return False
            if mask is not None and (mask.shape[1] != size[1] or mask.shape[0] not in (1, size[0])):
                raise ValueError(f"the mask is {mask.shape[0]}×{mask.shape[1]} but the calibration matrix is "
                                 f"{size[0]}×{size[1]}")
            maps = np.zeros((num_slices, num_coils) + size, np.complex64)
            for s in tqdm(range(num_slices), desc=os.path.basename(kspace_path), leave=False, unit="slice"):
                k = crop_kspace(torch.from_numpy(np.asarray(kspace[s], np.complex64)), size).numpy()
                if mask is not None:
                    k = k * mask
                maps[s] = espirit_maps(k, acs=args.acs, kernel=args.kernel, thresh=args.thresh, crop=args.crop,
                                       backend=args.backend, device=args.device)
    except OSError as err:
        raise ValueError(f"not a readable HDF5 file ({err})") from err
    write_maps_file(maps_path, maps, attrs={"backend": args.backend, "acs": args.acs, "kernel": args.kernel,
                                            "thresh": args.thresh, "crop": args.crop,
                                            "source": os.path.abspath(kspace_path)})
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="folder of fastMRI multi-coil .h5 files")
    parser.add_argument("--output", help="folder for the maps files (default: <input>_maps)")
    parser.add_argument("--backend", choices=BACKENDS, default="sigpy", help="ESPIRiT implementation (default sigpy)")
    parser.add_argument("--acs", type=int, default=24, help="calibration region side, centre lines (default 24)")
    parser.add_argument("--kernel", type=int, default=6, help="ESPIRiT kernel width (default 6)")
    parser.add_argument("--thresh", type=float, default=0.02, help="singular-value threshold (default 0.02)")
    parser.add_argument("--crop", type=float, default=0.95,
                        help="zero the maps where the ESPIRiT eigenvalue is below this (default 0.95; 0: never)")
    parser.add_argument("--crop-size", type=int, default=320,
                        help="image-domain centre crop n×n before calibration (default 320; 0: full matrix)")
    parser.add_argument("--mask", help="calibrate from undersampled data: multiply k-space by this mask "
                                       "(.mat key 'mask' or .npy, the size of the cropped matrix) first")
    parser.add_argument("--device", default="auto", help="sigpy device: auto (GPU when cupy finds one), cpu, or "
                                                         "a GPU index (default auto)")
    parser.add_argument("--overwrite", action="store_true", help="recompute maps files that exist already")
    args = parser.parse_args(argv)
    if args.backend == "bart" and bart_binary() is None:
        parser.error("--backend bart needs the `bart` executable on PATH (Debian/Ubuntu: apt-get install bart) "
                     "or in $TOOLBOX_PATH")
    try:
        files = list_h5_files(args.input)
        mask = read_mask(args.mask) if args.mask else None
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    output = args.output or default_maps_root(args.input)

    failed, written = [], 0
    for kspace_path in tqdm(files, desc="maps", unit="file"):
        try:
            check_regular(kspace_path)
            written += maps_for_file(kspace_path, os.path.join(output, os.path.basename(kspace_path)), args, mask)
        except (ValueError, RuntimeError) as err:
            failed.append(kspace_path)
            tqdm.write(f"FAILED {kspace_path}: {err}")
    print(f"{written} maps files written, {len(files) - written - len(failed)} already done, {len(failed)} failed "
          f"-> {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
