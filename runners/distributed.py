"""The process context of training: rank, world size and device under `torchrun`, and every rank's RNG states
(as tensors, so checkpoints load with `weights_only=True`)."""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import random

import numpy as np
import torch
import torch.distributed as dist


@dataclasses.dataclass
class Dist:
    """Rank, world size and device of this process (world size 1 without torchrun)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_rank() -> int:
    """This process's rank as `torchrun` launched it (0 without torchrun), also outside the process group, e.g.
    after a runner has left it."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(config, timeout: datetime.timedelta | None = None) -> Dist:
    """Resolve `config.device`; under `torchrun` (WORLD_SIZE > 1) join the process group (NCCL on CUDA, with this
    process on `cuda:<LOCAL_RANK>`; gloo on the CPU) whose collectives wait up to `timeout` (None: torch's default)."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config.device={config.device!r} but no CUDA device is visible; "
                         "pass --config.device=cpu or run on a machine with a GPU")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return Dist(dist.get_rank(), world_size, device)


def from_rank0(ctx: Dist, fn):
    """Run `fn()` on rank 0 only and give its result, or its exception, to every rank (none is left waiting)."""
    box = [None, None]
    if ctx.is_main:
        try:
            box[0] = fn()
        except Exception as err:  # re-raised below, on every rank
            box[1] = err
    if ctx.world_size > 1:
        dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise box[1]
    return box[0]


def rng_state(device: torch.device) -> dict:
    """RNG states of torch (CPU and this process's CUDA device), numpy and Python, all as tensors."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": torch.from_numpy(np_keys.astype(np.int64)),
             "numpy_extra": torch.tensor([np_pos, np_has_gauss, np_gauss], dtype=torch.float64),
             "python": torch.tensor((py_version,) + py_state, dtype=torch.int64),
             "python_gauss": torch.tensor(math.nan if py_gauss is None else py_gauss, dtype=torch.float64)}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore the states of `rng_state` (tensors on any device: checkpoints load onto the training device)."""
    state = {k: v.cpu() for k, v in state.items()}
    torch.set_rng_state(state["torch"])
    pos, has_gauss, gauss = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    py = state["python"].tolist()
    py_gauss = state["python_gauss"].item()
    random.setstate((py[0], tuple(py[1:]), None if math.isnan(py_gauss) else py_gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def all_rng_states(ctx: Dist) -> list[dict]:
    """The RNG states of every rank, in rank order (a collective: every rank must call it)."""
    if ctx.world_size == 1:
        return [rng_state(ctx.device)]
    states = [None] * ctx.world_size
    dist.all_gather_object(states, rng_state(ctx.device))
    return states

