"""Training throughput (images/s) of the score network at the paper config and the tiny CPU config.

    python bench/bench_train.py                                   # paper (batch 1) and tiny, on config.device
    python bench/bench_train.py --configs tiny --steps 50
    python bench/bench_train.py --device cuda --modes fp32 bf16 compile bf16+compile channels_last

A step is what training runs per batch: forward, HFS-SDE loss, backward, gradient clipping, Adam and the EMA
update (`losses.get_step_fn`), timed on a fixed batch already on the device after `--warmup` steps (so the numbers
exclude data loading; the cost does not depend on the image content). The paper config is
`configs/hfssde/ddpm_continuous.py` (DDPM, nf 128, 320×320) at batch 1; tiny is `configs/tiny.py` (nf 32, 32×32,
batch 2).
`--loop` also trains the tiny config through `runners.train.train` on a generated 32×32 phantom set and reads the
loop's own images/s from TensorBoard: data loading and bookkeeping show as its ratio to the bare step.
Ratios: each mode against fp32 of the same config, and paper against tiny.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import losses  # noqa: E402
from configs.hfssde.ddpm_continuous import get_config as paper_config  # noqa: E402
from configs.tiny import get_config as tiny_config  # noqa: E402
from models.ema import ExponentialMovingAverage  # noqa: E402
from runners import build  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"paper": (paper_config, 1), "tiny": (tiny_config, 2)}  # name -> (config factory, batch size)
MODES = ("fp32", "bf16", "compile", "bf16+compile", "channels_last")


def hardware(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    line = f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; torch {torch.__version__}"
    if device.startswith("cuda"):
        line += f"; GPU {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return line


def make_config(name: str, device: str, mode: str, batch_size: int = 0):
    factory, default_batch = CONFIGS[name]
    batch_size = batch_size or default_batch
    config = factory()
    config.device = device
    config.training.batch_size = batch_size
    config.training.bf16 = "bf16" in mode
    config.training.compile = "compile" in mode
    config.training.channels_last = mode == "channels_last"
    return config


def time_step(config, warmup: int, steps: int) -> float:
    """Seconds per training step of `config` on a fixed random batch."""
    device, t = torch.device(config.device), config.training
    model = build.create_model(config)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_model = torch.compile(model) if t.compile else model
    sde = build.make_sde(config)
    optimizer = build.make_optimizer(config, train_model.parameters())
    ema = ExponentialMovingAverage(train_model.parameters(), decay=config.model.ema_rate)
    state = dict(model=train_model, optimizer=optimizer, ema=ema, step=0)
    step_fn = losses.get_step_fn(sde, True, build.make_optimize_fn(config), t.reduce_mean, t.continuous,
                                 t.likelihood_weighting, t.eps, t.bf16)
    size = config.data.image_size
    x = torch.randn(t.batch_size, 2, size, size, device=device)
    if t.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(warmup):
        step_fn(state, x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step_fn(state, x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def loop_images_per_s(device: str, steps: int) -> float:
    """Images/s that `runners.train.train` reports for the tiny config on a generated phantom set."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from runners.train import train

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.join(ROOT, "data_prepare", "generate_smaps_phantom.py"), "--out",
                        tmp, "--train", "16", "--val", "2", "--size", "32", "--coils", "8", "15"],
                       check=True, capture_output=True)
        config = make_config("tiny", device, "fp32")
        config.data.root, config.data.eval_root = os.path.join(tmp, "train"), os.path.join(tmp, "val")
        config.training.n_iters, config.training.log_freq = steps, steps // 2
        config.training.eval_freq = config.training.snapshot_freq = config.training.epoch_snapshot_freq = 0
        config.training.snapshot_freq_for_preemption = 0
        run_dir = train(config, os.path.join(tmp, "runs"))
        events = EventAccumulator(os.path.join(run_dir, "tensorboard"))
        events.Reload()
        return events.Scalars("train/images_per_s")[-1].value  # the second half: warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["fp32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=0, help="batch size (default: 1 paper, 2 tiny)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default: 3 paper / 30 tiny on CPU, 20/100 "
                                                              "on CUDA)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps first (default 1 on CPU, 5 on CUDA; "
                                                              "compile modes add 3)")
    parser.add_argument("--loop", action="store_true", help="also time the whole training loop (tiny config)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    print(hardware(args.device))
    print(f"{'config':<7} {'mode':<14} {'batch':>5} {'size':>5} {'ms/step':>10} {'images/s':>10} {'vs fp32':>8}")
    rates: dict[tuple[str, str], float] = {}
    for name in args.configs:
        for mode in args.modes:
            config = make_config(name, args.device, mode, args.batch)
            steps = args.steps or {("paper", False): 3, ("tiny", False): 30, ("paper", True): 20,
                                   ("tiny", True): 100}[(name, cuda)]
            warmup = (args.warmup or (5 if cuda else 1)) + (3 if "compile" in mode else 0)
            seconds = time_step(config, warmup, steps)
            rates[name, mode] = config.training.batch_size / seconds
            base = rates.get((name, "fp32"))
            ratio = f"{rates[name, mode] / base:.2f}x" if base else "-"
            print(f"{name:<7} {mode:<14} {config.training.batch_size:>5} {config.data.image_size:>5} "
                  f"{seconds * 1e3:>10.1f} {rates[name, mode]:>10.3g} {ratio:>8}", flush=True)
    for mode in args.modes:
        if ("paper", mode) in rates and ("tiny", mode) in rates:
            print(f"paper/tiny images/s ({mode}): {rates['paper', mode] / rates['tiny', mode]:.4f}")
    if args.loop:
        if ("tiny", "fp32") not in rates:
            rates["tiny", "fp32"] = 2 / time_step(make_config("tiny", args.device, "fp32"), 5, 30)
        loop = loop_images_per_s(args.device, 200 if cuda else 60)
        print(f"tiny training loop (loading 8-15-coil slices, logging): {loop:.1f} images/s = "
              f"{loop / rates['tiny', 'fp32']:.2f}x the bare fp32 step")


if __name__ == "__main__":
    main()
