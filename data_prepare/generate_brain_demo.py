"""Build the public brain set: multi-coil k-space in the fastMRI layout from the MNI152 2009a T1 template.

    pip download nilearn --no-deps -d /tmp/wheels          # the template ships inside the nilearn wheel
    python data_prepare/generate_brain_demo.py --source /tmp/wheels --out data/brain_demo

`--source` is the template file (`mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`), a nilearn wheel, or a
folder holding either; without it an installed nilearn is looked up (nilearn itself is never imported and is not a
requirement). Each axial slice (1 mm, 197 × 233 in plane) is fitted into `--size`², given a smooth random phase,
birdcage coils and complex noise by `data_prepare/simulate_multicoil.py`'s code.

The template is skull-stripped; real heads show skull and scalp. Validation and test slices therefore get skull and
scalp layers (`utils/augment.add_scalp`, seeded); training slices stay brain-only and receive the layers, like the
other augmentations, on the fly (`data.augment.scalp`). Maps: training volumes store the true birdcage
sensitivities; validation and test volumes store ESPIRiT estimates from their central 24 columns, as a user
would for scanner data (zero outside the head).

The split is by slabs of the template's axial (z, mm) axis, with no training slice within `GAP_MM` of a
validation or test slice (`SPLIT`, also written to `<out>/split.json`):

- test: z = 74, 78, 82, 86 (lateral ventricles, basal ganglia);
- val: z = 116, 120 (centrum semiovale);
- train: z = 20 … 165 except 64 … 96 and 106 … 130, in three volumes with 8, 10 and 12 coils.

Existing files are kept unless `--overwrite`.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys
import tempfile
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # sigpy's ESPIRiT: see generate_smaps_phantom.py

import numpy as np  # noqa: E402

from data_prepare.fastmri_io import write_kspace_file, write_maps_file  # noqa: E402
from data_prepare.simulate_multicoil import Acquisition, fit_to_size, load_stack, simulate_volume  # noqa: E402
from utils.atomic import atomic_path  # noqa: E402
from utils.augment import add_scalp  # noqa: E402

TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
WHEEL_MEMBER = "nilearn/datasets/data/" + TEMPLATE
GAP_MM = 10
TEST_Z, VAL_Z = (74, 78, 82, 86), (116, 120)
TRAIN_RANGE = (20, 165)
COILS = {"test": 8, "val": 8}
TRAIN_COILS = (8, 10, 12)
SNR_DB = 40.0
ACS = 24


def train_slices() -> list[int]:
    """Training z positions: `TRAIN_RANGE` without any slice within `GAP_MM` of a validation or test slice."""
    held_out = TEST_Z + VAL_Z
    return [z for z in range(TRAIN_RANGE[0], TRAIN_RANGE[1] + 1) if min(abs(z - h) for h in held_out) > GAP_MM]


def split() -> dict[str, list[int]]:
    """z positions (mm) of each split."""
    return {"train": train_slices(), "val": list(VAL_Z), "test": list(TEST_Z)}


def find_template(source: str | None, workdir: str) -> str:
    """Path of the template NIfTI: `source` itself, the member of a nilearn wheel (extracted into `workdir`), the
    template or a wheel inside a folder, or the copy inside an installed nilearn."""
    candidates = []
    if source is None:
        spec = importlib.util.find_spec("nilearn")
        if spec and spec.submodule_search_locations:
            candidates.append(os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", TEMPLATE))
    elif os.path.isdir(source):
        candidates += glob.glob(os.path.join(source, "**", TEMPLATE), recursive=True)
        candidates += sorted(glob.glob(os.path.join(source, "nilearn-*.whl")))
    else:
        candidates.append(source)
    for path in candidates:
        if path.endswith(".whl") and os.path.isfile(path):
            with zipfile.ZipFile(path) as wheel:
                if WHEEL_MEMBER not in wheel.namelist():
                    continue
                target = os.path.join(workdir, TEMPLATE)
                with open(target, "wb") as f:
                    f.write(wheel.read(WHEEL_MEMBER))
                return target
        if path.endswith(TEMPLATE) and os.path.isfile(path):
            return path
    where = source or "an installed nilearn"
    raise FileNotFoundError(f"no MNI152 template ({TEMPLATE}) found in {where}; get it with `pip download nilearn "
                            f"--no-deps -d /tmp/wheels` and pass --source /tmp/wheels")


def load_template(path: str, size: int) -> tuple[np.ndarray, float]:
    """Axial slices `[z, size, size]` scaled to [0, 1] and their pixel size in mm."""
    try:
        stack, spacing = load_stack(path, 2)
    except ValueError as err:  # a damaged or mistyped file (simulate_multicoil.load_stack)
        raise ValueError(f"{path}: {err}") from err
    stack = np.nan_to_num(stack) / stack.max()
    scale = max(stack.shape[1] * spacing[0], stack.shape[2] * spacing[1]) / size
    return np.stack([fit_to_size(s, spacing, size, "fit") for s in stack]), scale


def write_volume(out: str, split_name: str, name: str, magnitude: np.ndarray, num_coils: int, seed: list[int],
                 estimate_maps: bool, provenance: dict) -> None:
    """Simulate one volume `[S, n, n]` and write its k-space and maps files."""
    rng = np.random.default_rng(seed)
    acquisition = Acquisition(coils=num_coils, coil_radius=1.5, snr_db=SNR_DB,
                              maps="espirit" if estimate_maps else "true", acs=ACS)
    kspace, maps = simulate_volume(magnitude, rng, acquisition)
    folder = os.path.join(out, split_name)
    attrs = dict(provenance, seed=json.dumps(seed), snr_db=SNR_DB, maps="espirit" if estimate_maps else "true")
    write_kspace_file(os.path.join(folder, name + ".h5"), kspace, acquisition="SIMULATED_BRAIN", patient_id=name,
                      recon_size=magnitude.shape[-1], precision=1e-3, compress=True, attrs=attrs)
    write_maps_file(os.path.join(folder + "_maps", name + ".h5"), maps, precision=1e-3, compress=True, attrs=attrs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=None, help="template .nii.gz, nilearn wheel, or a folder with either")
    parser.add_argument("--out", default="data/brain_demo", help="output folder (default data/brain_demo)")
    parser.add_argument("--size", type=int, default=128, help="matrix n of the n×n slices (default 128)")
    parser.add_argument("--splits", nargs="+", choices=("train", "val", "test"), default=("train", "val", "test"))
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite files that already exist")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hfs_brain_") as tmp:
        try:
            template = find_template(args.source, tmp)
            slices, pixel_mm = load_template(template, args.size)
        except (OSError, ValueError) as err:
            parser.error(str(err))
    positions = split()
    provenance = {"source": f"MNI152 2009a T1 ({TEMPLATE})", "pixel_mm": pixel_mm}
    volumes = []  # (split, name, z positions, coils)
    for split_name in ("test", "val"):
        volumes.append((split_name, f"mni152_{split_name}", positions[split_name], COILS[split_name]))
    runs = np.split(np.array(positions["train"]), np.flatnonzero(np.diff(positions["train"]) > 1) + 1)
    volumes += [("train", f"mni152_train_{i}", list(run), TRAIN_COILS[i % len(TRAIN_COILS)])
                for i, run in enumerate(runs)]
    for index, (split_name, name, zs, coils) in enumerate(volumes):
        if split_name not in args.splits:
            continue
        if not args.overwrite and os.path.exists(os.path.join(args.out, split_name, name + ".h5")):
            print(f"kept {split_name}/{name}.h5")
            continue
        seed = [args.seed, index]
        magnitude = slices[zs]
        if split_name != "train":
            rng = np.random.default_rng(seed + [1])
            magnitude = np.stack([add_scalp(m, rng, pixel_mm) for m in magnitude])
            magnitude /= magnitude.max()
        write_volume(args.out, split_name, name, magnitude, coils, seed, split_name != "train",
                     dict(provenance, z_mm=json.dumps([int(z) for z in zs])))
        print(f"{split_name}/{name}.h5: z = {zs[0]}…{zs[-1]} mm ({len(zs)} slices), {coils} coils")
    os.makedirs(args.out, exist_ok=True)
    with atomic_path(os.path.join(args.out, "split.json")) as tmp, open(tmp, "w") as f:
        json.dump({"source": TEMPLATE, "axis": "z (axial, mm)", "gap_mm": GAP_MM, **positions}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
