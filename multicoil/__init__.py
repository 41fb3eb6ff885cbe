"""Multi-coil MRI slices from fastMRI-layout `.h5` files, one module per part (the config-facing entry points and
the published names are in `datasets.py`):

- `errors`: `DataError` (a file or folder that cannot be used) and `SliceError` (one slice of a file).
- `normalize`: the per-slice normalisations (`std`, `img_std`, `minmax`).
- `folders`: the data folders: listing `.h5` files, the maps folder beside a k-space folder, and the commands that
  write the bundled configs' data sets.
- `index`: the slice index (shapes read from the files, checked, and cached outside the data folders).
- `dataset`: the `Dataset` of slices, its collation and the loader that carries a worker's `SliceError` across.
"""
