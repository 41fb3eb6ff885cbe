"""Forward time of NCSN++ against the DDPM U-Net at the paper's image size, both with their published settings.

    python bench/bench_ncsnpp.py --device cpu --nf 64 --ncsnpp-nf 48 --repeats 1
    python bench/bench_ncsnpp.py --device cuda --batch 4 --repeats 10

Both networks are built from the HFS-SDE configs (`configs/hfssde/{ddpm,ncsnpp}_continuous.py`) with `model.nf`
replaced: the DDPM's by `--nf`, NCSN++'s by `--ncsnpp-nf`, whose defaults (128 and 96) give both about 34.5M
parameters (NCSN++ has four residual blocks per level, DDPM two; the published NCSN++ with nf=128 has 61M).
Prints parameters, the median seconds per forward (no gradients, after one warm-up) and the NCSN++ / DDPM ratio.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_sampler import timed  # noqa: E402
from configs.hfssde.ddpm_continuous import get_config as ddpm_config  # noqa: E402
from configs.hfssde.ncsnpp_continuous import get_config as ncsnpp_config  # noqa: E402
from runners.build import create_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nf", type=int, default=128, help="model.nf of the DDPM network")
    parser.add_argument("--ncsnpp-nf", type=int, default=96, help="model.nf of NCSN++")
    parser.add_argument("--size", type=int, default=320, help="image size (the paper's 320)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    seconds = {}
    for name, get_config, nf in (("ddpm", ddpm_config, args.nf), ("ncsnpp", ncsnpp_config, args.ncsnpp_nf)):
        config = get_config()
        config.device, config.model.nf, config.data.image_size = args.device, nf, args.size
        model = create_model(config).eval()
        params = sum(p.numel() for p in model.parameters())
        x = torch.randn(args.batch, config.data.num_channels, args.size, args.size, device=args.device)
        labels = torch.full((args.batch,), 0.5, device=args.device)
        with torch.no_grad():
            seconds[name] = timed(lambda: model(x, labels), args.device, args.repeats)
        print(f"{name:7s} nf={nf} {params / 1e6:6.2f}M parameters, {args.size}x{args.size} batch {args.batch}: "
              f"{seconds[name]:.3f} s per forward")
    print(f"NCSN++ / DDPM forward time: {seconds['ncsnpp'] / seconds['ddpm']:.2f}")


if __name__ == "__main__":
    main()
