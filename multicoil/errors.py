"""The errors of unusable data: one line naming the path and the fix."""
from __future__ import annotations

_SKIP_HINT = "or set data.skip_broken=True to skip broken slices"


class DataError(ValueError):
    """A data file or folder that cannot be used; the message (one line) names the path and the fix."""


class SliceError(DataError):
    """One slice of a data file that cannot be used.

    Its arguments are its fields, so it pickles whole: a DataLoader worker hands it over as a value
    (`multicoil.dataset.SliceLoader`) and the main process raises the same error, fields and message intact.

    Args:
        path: the `.h5` file.
        key: its dataset, `kspace` or `s_maps`.
        slice_idx: the slice of the volume.
        problem: what is wrong (`"cannot be read (…)"`, `"holds 3 non-finite values (NaN or Inf)"`).
        fix: what to do with the file.
    """

    def __init__(self, path: str, key: str, slice_idx: int, problem: str, fix: str):
        super().__init__(path, key, slice_idx, problem, fix)
        self.path, self.key, self.slice_idx, self.problem, self.fix = path, key, slice_idx, problem, fix

    def __str__(self) -> str:
        return f"{self.path}: {self.key!r} of slice {self.slice_idx} {self.problem}; {self.fix}, {_SKIP_HINT}"
