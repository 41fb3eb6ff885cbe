"""Export a training checkpoint for sampling: one set of weights (the EMA averages, or the raw weights with --raw) as
`model`, float16 unless --fp32, with the step and the config record; no optimizer and no separate EMA (a quarter of
the meta checkpoint's size).

    python -m runners.export results/<run>/checkpoints-meta/checkpoint.pth demo/hfssde_brain_demo.pth

The network is rebuilt from the checkpoint's config record (the keys that shape it), so no config file is needed.
A file exported from the EMA is marked `weights: "ema"` and serves `sampling.use_ema=True` as well as False. The file
records the SHA-256 of its weights (`weights_sha256`), checked whenever it is read (utils/checkpoints.py).
"""
from __future__ import annotations

import argparse
import os
import sys


from configs.default_fastMRI_configs import get_default_configs
from runners.build import checkpoint_record, create_model
from utils.checkpoints import (WEIGHTS_DIGEST, CheckpointError, atomic_save, load_model_weights, read_checkpoint,
                               weights_digest)


def config_from_record(record: dict):
    """The default config with the keys of a checkpoint's config record set (lists back to tuples)."""
    config = get_default_configs()
    for key, value in record.items():
        group, name = key.split(".")
        config[group][name] = tuple(value) if isinstance(value, list) else value
    return config


def export(src: str, dst: str, ema: bool = True, half: bool = True) -> None:
    """Write `dst` from the training checkpoint `src` (module docstring)."""
    loaded = read_checkpoint(src, "cpu")
    if "config" not in loaded:
        raise CheckpointError(f"checkpoint {src} has no config record (it was written before records were kept); "
                              f"retrain, or sample from it as it is with sampling.checkpoint={src}")
    config = config_from_record(loaded["config"])
    model = create_model(config)
    step = load_model_weights(src, model, ema, "cpu", checkpoint_record(config))
    weights = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    atomic_save({"model": weights, "step": step, "config": loaded["config"], "weights": "ema" if ema else "raw",
                 WEIGHTS_DIGEST: weights_digest(weights)}, os.fspath(dst))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="training checkpoint (e.g. results/<run>/checkpoints-meta/checkpoint.pth)")
    parser.add_argument("dst", help="sampling checkpoint to write")
    parser.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA averages")
    parser.add_argument("--fp32", action="store_true", help="keep float32 tensors")
    args = parser.parse_args(argv)
    try:
        export(args.src, args.dst, ema=not args.raw, half=not args.fp32)
    except (OSError, ValueError) as err:
        parser.exit(1, f"export: {err}\n")
    print(f"{args.dst}: {'EMA' if not args.raw else 'raw'} weights of {args.src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
