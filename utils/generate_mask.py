"""Write masks in the published naming as compressed `.mat` files (key `mask`).

    python utils/generate_mask.py --type uniform --acc 10 --acs 24 --size 320
    python utils/generate_mask.py --type cartesian --acc 8 --acs 16 --size 128 --seed 0   # -> mask/128/
    python utils/generate_mask.py --published        # the whole set shipped in mask/

Masks of 320×320 (the published size) go to `mask/`, other sizes to `mask/<size>/`, where `utils/masks.get_mask`
looks first. An existing file is never replaced by a different mask (the shipped masks stay as published).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.masks import KINDS, load_mask, make_mask, mask_name, save_mask  # noqa: E402

PUBLISHED_SIZE = 320

# The masks the published code ships (mask/ of the HFS-SDE repository), all 320×320.
PUBLISHED = (
    [("low_frequency", None, a) for a in (2, 8, 16, 18, 20, 22, 24, 26, 28, 30, 32, 36, 50, 60, 100)]
    + [("center", None, a) for a in (2, 8, 16, 24, 32, 100)]
    + [("uniform", r, a) for r in (4, 6, 8, 10, 12) for a in (16, 18, 20, 22, 24)]
    + [("uniform", r, a) for r, a in ((14, 20), (14, 24), (16, 24), (20, 18))]
    + [("cartesian", r, a) for r, a in ((5, 24), (6, 18), (6, 24), (8, 16), (8, 18), (10, 12), (10, 24), (12, 12),
                                         (12, 22))]
    + [("random_uniform", r, a) for r, a in ((6, 18), (6, 22), (6, 24), (8, 24), (10, 24))]
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--type", choices=KINDS, help="mask family")
    parser.add_argument("--acc", type=float, help="acceleration R (uniform, cartesian, random_uniform)")
    parser.add_argument("--acs", type=int, help="centre columns (or the centre square's side for center)")
    parser.add_argument("--size", type=int, default=320, help="matrix size n of the n×n mask (default 320)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random families (default 0)")
    parser.add_argument("--out", help=f"output folder (default mask/ for {PUBLISHED_SIZE}×{PUBLISHED_SIZE}, "
                        f"mask/<size>/ for other sizes)")
    parser.add_argument("--published", action="store_true", help="write the published set of masks")
    args = parser.parse_args(argv)

    if args.published:
        specs = PUBLISHED
    elif args.type and args.acs:
        specs = [(args.type, args.acc, args.acs)]
    else:
        parser.error("give --type and --acs (and --acc for uniform/cartesian/random_uniform), or --published")
    out = args.out or ("mask" if args.size == PUBLISHED_SIZE else os.path.join("mask", str(args.size)))
    for kind, acc, acs in specs:
        try:
            mask = make_mask(kind, args.size, acc=acc, acs=acs, seed=args.seed)
        except ValueError as err:
            parser.error(str(err))
        path = os.path.join(out, mask_name(kind, acc, acs) + ".mat")
        if os.path.exists(path) and not np.array_equal(load_mask(path), mask):
            parser.error(f"{path} exists and holds another mask; it is kept: give another --out (or delete it)")
        save_mask(path, mask)
        print(f"{path}: {args.size}×{args.size}, {mask[0].sum():.0f} of {args.size} columns "
              f"(sampled fraction {mask.mean():.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
