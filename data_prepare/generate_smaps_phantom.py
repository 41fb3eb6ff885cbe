"""Generate the synthetic phantom set (randomised anatomy-like phantoms, birdcage coils) in the fastMRI layout.

    python data_prepare/generate_smaps_phantom.py --out data/phantom --train 200 --val 8

writes `data/phantom/{train,val}/phantom_<split>_<i>.h5` (dataset `kspace`) and the true coil sensitivities in
`data/phantom/{train,val}_maps/` (dataset `s_maps`), the folders the default config reads. Volumes are
deterministic from `--seed` (each split draws from its own seeds); existing files are kept unless `--overwrite`,
so an interrupted run resumes. `--maps sigpy|bart` stores ESPIRiT estimates (from the central `--acs` lines)
instead of the true maps, as a real acquisition would need. The bundled test slices were made with

    python data_prepare/generate_smaps_phantom.py --out data/phantom --train 0 --val 0 --test 2 --slices 2 \\
        --coils 8 10 --seed 2024 --precision 1e-2
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# sigpy's ESPIRiT makes millions of tiny BLAS calls, 2–3× slower with threaded BLAS: one BLAS thread unless set.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from utils.coils import add_noise  # noqa: E402
from data_prepare.espirit import BACKENDS, espirit_maps  # noqa: E402
from data_prepare.fastmri_io import write_kspace_file, write_maps_file  # noqa: E402
from data_prepare.phantom import phantom_volume, volume_seed  # noqa: E402


def write_split(args: argparse.Namespace, split: str, count: int) -> None:
    """Write volumes 0 … count−1 of one split, skipping the ones already on disk."""
    kspace_dir = os.path.join(args.out, split)
    maps_dir = kspace_dir + "_maps"
    for index in tqdm(range(count), desc=split, unit="volume", disable=count == 0):
        name = f"phantom_{split}_{index:04d}.h5"
        kspace_path, maps_path = os.path.join(kspace_dir, name), os.path.join(maps_dir, name)
        if not args.overwrite and os.path.exists(kspace_path) and os.path.exists(maps_path):
            continue
        seed = volume_seed(args.seed, split, index)
        kspace, maps, _ = phantom_volume(seed, args.size, args.slices, tuple(args.coils), args.max_phase)
        if args.snr_db is not None:
            kspace = add_noise(kspace, args.snr_db, np.random.default_rng(seed + 1))
        if args.maps != "true":
            maps = np.stack([espirit_maps(k, acs=args.acs, backend=args.maps) for k in kspace])
        provenance = {"generator": "hfs-sde data_prepare/phantom.py", "seed": seed, "maps": args.maps,
                      "snr_db": "none" if args.snr_db is None else args.snr_db}
        compress = args.precision > 0
        write_kspace_file(kspace_path, kspace, acquisition="PHANTOM", patient_id=f"phantom-{seed}",
                          recon_size=args.size, precision=args.precision, compress=compress, attrs=provenance)
        write_maps_file(maps_path, maps, precision=args.precision, compress=compress, attrs=provenance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/phantom", help="output folder (default data/phantom)")
    parser.add_argument("--train", type=int, default=200, help="training volumes (default 200)")
    parser.add_argument("--val", type=int, default=8, help="validation volumes (default 8)")
    parser.add_argument("--test", type=int, default=0, help="test volumes (default 0; a few are bundled)")
    parser.add_argument("--slices", type=int, default=1, help="slices per volume (default 1)")
    parser.add_argument("--size", type=int, default=320, help="matrix size n of the n×n slices (default 320)")
    parser.add_argument("--coils", type=int, nargs=2, default=(8, 15), metavar=("MIN", "MAX"),
                        help="coil count range, drawn per volume (default 8 15)")
    parser.add_argument("--max-phase", type=float, default=1.0, help="smooth phase amplitude, radians (default 1)")
    parser.add_argument("--snr-db", type=float, default=None, help="add complex noise at this SNR (default none)")
    parser.add_argument("--maps", choices=("true",) + BACKENDS, default="true",
                        help="store the true sensitivities (default) or ESPIRiT estimates")
    parser.add_argument("--acs", type=int, default=24, help="ESPIRiT calibration region (with --maps sigpy|bart)")
    parser.add_argument("--precision", type=float, default=1e-3,
                        help="store values rounded to a step of about this fraction of their rms, gzip-compressed "
                             "(default 1e-3; 0 stores exact, uncompressed float32)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite volumes that already exist")
    args = parser.parse_args(argv)
    if min(args.train, args.val, args.test) < 0 or args.slices < 1 or args.size < 8:
        parser.error("volume counts must be >= 0, --slices >= 1 and --size >= 8")
    if not 1 <= args.coils[0] <= args.coils[1]:
        parser.error(f"--coils MIN MAX needs 1 <= MIN <= MAX, got {args.coils[0]} {args.coils[1]}")

    for split, count in (("train", args.train), ("val", args.val), ("test", args.test)):
        write_split(args, split, count)
        if count:
            print(f"{split}: {count} volumes × {args.slices} slices in {os.path.join(args.out, split)} "
                  f"(maps in {os.path.join(args.out, split)}_maps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
