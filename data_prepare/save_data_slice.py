"""Build (or refresh) the slice index of data folders and check every file, before training.

    python data_prepare/save_data_slice.py data/fastMRI/knee/train data/fastMRI/knee/val
    python data_prepare/save_data_slice.py data/phantom/train --maps-root data/phantom/train_maps

The dataset builds this index itself on first use; running it beforehand checks every file (readable, `kspace` and
`s_maps` present and matching) and, for multi-GPU runs, keeps the ranks from scanning at once. It replaces the
published `data/data_slice.pkl`: the index (slices and coils per file, read from the `.h5` shapes) is cached per
folder under `$XDG_CACHE_HOME/hfs-sde/slice_index/` (default `~/.cache/...`) and refreshed when a file changes.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import DataError, build_index, default_maps_root, index_cache_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", help="k-space folders")
    parser.add_argument("--maps-root", help="maps folder (one k-space folder only; default <root>_maps)")
    parser.add_argument("--image-size", type=int, default=320, help="crop size the files must allow (default 320)")
    parser.add_argument("--skip-broken", action="store_true", help="report broken files and index the rest")
    parser.add_argument("--verbose", action="store_true", help="list every file")
    args = parser.parse_args(argv)
    if args.maps_root and len(args.roots) > 1:
        parser.error("--maps-root applies to one k-space folder; run once per folder")

    status = 0
    for root in args.roots:
        maps_root = args.maps_root or default_maps_root(root)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                volumes = build_index(root, maps_root, args.image_size, skip_broken=args.skip_broken)
        except (FileNotFoundError, DataError) as err:
            print(f"ERROR {err}", file=sys.stderr)
            status = 1
            continue
        for warning in caught:
            print(f"SKIPPED {warning.message}", file=sys.stderr)
        if args.verbose:
            for v in volumes:
                print(f"  {v.name}: {v.kspace_shape[0]} slices, {v.kspace_shape[1]} coils, "
                      f"k-space {v.kspace_shape[2]}×{v.kspace_shape[3]}, maps {v.maps_shape[2]}×{v.maps_shape[3]}")
        slices = sum(v.kspace_shape[0] for v in volumes)
        print(f"{root}: {len(volumes)} files, {slices} slices (maps in {maps_root}); "
              f"index {index_cache_path(root, maps_root)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
