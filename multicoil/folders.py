"""The data folders: the `.h5` files of a folder, the maps folder beside a k-space folder, and the commands that write
the bundled configs' data sets (named when such a folder is missing)."""
from __future__ import annotations

import os
import stat

from multicoil.errors import DataError


def default_maps_root(kspace_root: str) -> str:
    """`<root>_maps` beside the k-space folder (the layout `data.maps_root = ""` stands for)."""
    return os.path.normpath(kspace_root) + "_maps"


# The data sets of the bundled configs: folder (relative to the repository) -> (command that writes it, run from
# the repository folder; whether it needs nothing downloaded, so training and tuning generate it on first use).
_PHANTOM = "python data_prepare/generate_smaps_phantom.py --out {out} --size {size}"
BUNDLED_SETS = {
    "data/phantom": (_PHANTOM + " --train 200 --val 8", True),
    "data/phantom_demo": (_PHANTOM + " --train 400 --val 4 --seed 7", True),
    "data/brain_demo": ("pip download nilearn --no-deps -d /tmp/wheels && python data_prepare/generate_brain_demo.py "
                        "--source /tmp/wheels --out {out} --size {size}", False),
}
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_command(folder: str, image_size: int) -> tuple[str, bool] | None:
    """`(command, needs no download)` that writes `folder` when it is a split of a bundled config's data set
    (`BUNDLED_SETS`, images of `image_size`), else None."""
    parent = os.path.relpath(os.path.dirname(os.path.abspath(folder)), _REPO)
    if parent not in BUNDLED_SETS:
        return None
    command, generated = BUNDLED_SETS[parent]
    return command.format(out=os.path.dirname(os.path.normpath(folder)), size=image_size), generated


def missing_folder_hint(folder: str, image_size: int) -> str:
    """How to make a missing data folder: the bundled set's command, else the config keys and the maps script."""
    known = data_command(folder, image_size)
    if known is not None:
        return f"create it with `{known[0]}`"
    return ("give a folder of fastMRI multi-coil .h5 files (config keys data.root, data.eval_root, "
            "data.test_roots.<set>)")


def check_regular(path: str) -> None:
    """Raise DataError unless `path` is a regular file (or a link to one): a named pipe or device would block the
    HDF5 reader forever, a folder or a dangling link would fail later with a message about HDF5."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise DataError(f"{path} cannot be opened ({err.strerror}; a dangling link?): replace it, or move it out of "
                        f"the folder") from err
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device file")
        raise DataError(f"{path} is {kind}, not an HDF5 file: move it out of the folder, or rename it so that it "
                        f"does not end in .h5")


def list_h5_files(folder: str, what: str = "k-space", image_size: int = 320) -> list[str]:
    """Sorted `.h5` files of a folder; a clear error, naming the command that makes the data, when the folder is
    missing or holds none."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what} folder {folder} does not exist; {missing_folder_hint(folder, image_size)}")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".h5"))
    if not files:
        raise FileNotFoundError(f"{what} folder {folder} holds no .h5 files; "
                                f"{missing_folder_hint(folder, image_size)}")
    return files
