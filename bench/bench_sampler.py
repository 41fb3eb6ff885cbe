"""Sampler overhead: seconds per PC step divided by (network evaluations per step × one network forward).

    python bench/bench_sampler.py --config paper --device cpu --batches 1
    python bench/bench_sampler.py --config paper --device cuda --batches 1,4

A ratio of 1.00 means the sampler costs exactly its network evaluations; the rest is FFTs, data consistency,
projections and bookkeeping. Slices/s compares batch sizes in the same run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sampling  # noqa: E402
from configs.hfssde.ddpm_continuous import get_config as paper_config  # noqa: E402
from configs.tiny import get_config as tiny_config  # noqa: E402
from models import get_score_fn  # noqa: E402
from runners import build  # noqa: E402
from utils.mri import sense_adjoint  # noqa: E402


def timed(fn, device: str, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` runs after one warm-up run."""
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(config, batch: int, coils: int, repeats: int) -> dict:
    device = config.device
    sde = build.make_sde(config)
    model = build.create_model(config).eval()
    score_fn = get_score_fn(sde, model, train=False)
    h = config.data.image_size
    mask = build.sample_mask(config)
    csm = torch.randn(batch, coils, h, h, dtype=torch.complex64, device=device)
    csm = csm / torch.sqrt((csm.abs() ** 2).sum(1, keepdim=True))
    y = mask * torch.randn(batch, coils, h, h, dtype=torch.complex64, device=device)
    noise = sampling.SampleNoise(range(batch), device)
    x = sampling.initial_state(sde, y, csm, noise)
    aty = sense_adjoint(y, csm, mask)
    t = torch.full((batch,), 0.5, device=device)
    s = config.sampling
    steps, snr = build.sampling_schedule(config)
    predictor, corrector = sampling.PREDICTORS.get(s.predictor), sampling.CORRECTORS.get(s.corrector)

    def forward():
        score_fn(x, t)

    def pc_step():
        x1, _ = corrector(sde, score_fn, x, t, aty, csm, mask, snr=snr, weight=s.corrector_mse,
                          noise=noise(x.shape))
        predictor(sde, score_fn, x1, t, aty, csm, mask, weight=s.mse, noise=noise(x.shape), num_steps=steps)

    with torch.no_grad():
        t_forward = timed(forward, device, repeats)
        t_step = timed(pc_step, device, repeats)
    return {"batch": batch, "forward_s": t_forward, "step_s": t_step, "ratio": t_step / (2 * t_forward),
            "slices_per_s": batch / (steps * t_step)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["paper", "tiny"], default="paper")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1", help="comma-separated batch sizes, e.g. 1,4")
    parser.add_argument("--coils", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    config = paper_config() if args.config == "paper" else tiny_config()
    config.device = args.device
    config.sampling.accelerated_sampling = True
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.config} config, {config.data.image_size}², {args.coils} coils, {name}, torch {torch.__version__}")
    print("batch  forward s  PC step s  step/(2·forward)  slices/s (N=100)")
    rows = [measure(config, int(b), args.coils, args.repeats) for b in args.batches.split(",")]
    for r in rows:
        print(f"{r['batch']:5d}  {r['forward_s']:9.4f}  {r['step_s']:9.4f}  {r['ratio']:16.3f}  {r['slices_per_s']:.4f}")
    if len(rows) > 1:
        print(f"throughput batch {rows[-1]['batch']} / batch {rows[0]['batch']}: "
              f"{rows[-1]['slices_per_s'] / rows[0]['slices_per_s']:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
