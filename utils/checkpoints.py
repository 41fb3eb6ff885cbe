"""Training checkpoints in the published format `{model, ema, optimizer, step, ...}`.

Model keys are written with the `module.` prefix that the published code's DataParallel wrapper produced, so its
tools read our files; on loading, `module.` and `_orig_mod.` (torch.compile) prefixes are accepted and the
weights must fit the network exactly. Files are written atomically and read with `weights_only=True`.

Training checkpoints also hold `config`: the config keys that shape the weights (the SDE, the data normalisation
and the network, and the SDE's schedule and low-frequency mask; the runners choose them, `runners/build.py`), as
`{"group.key": value}`. Loading a checkpoint under a record that differs in any of them warns in one line naming
the keys (same-shaped weights of another SDE load, but their score belongs to that SDE). Files without the record
(published weights) load silently.

Exported checkpoints (runners/export.py) also hold `weights_sha256`, the SHA-256 of their weights (`weights_digest`);
reading such a file checks it, so flipped bytes inside the weights are one error naming the file instead of a
network that silently computes something else. Files without it (training checkpoints, older exports, published
weights) are read as they are.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import torch
from torch import nn

from utils.atomic import atomic_path

_PREFIXES = ("module.", "_orig_mod.")
_CONFIG_HINT = ("the checkpoint was probably trained with other network settings: check model.nf, model.ch_mult, "
                "model.num_res_blocks, model.attn_resolutions, model.conditional, data.image_size and "
                "data.num_channels (model.num_scales sizes the `sigmas` buffer) against the run that wrote it")
_MAX_LISTED = 20
WEIGHTS_DIGEST = "weights_sha256"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the network; the message names the file and the fix."""


def check_config_record(path: str, loaded: dict[str, Any], record: dict[str, Any]) -> None:
    """Warn in one line when the checkpoint's `config` record differs from `record` (the same `{"group.key": value}`
    entries of the current config) in keys both hold."""
    saved = loaded.get("config")
    if not isinstance(saved, dict):
        return
    changed = [f"{k}={value!r} (config: {record[k]!r})" for k, value in saved.items()
               if k in record and value != record[k]]
    if changed:
        logging.warning("checkpoint %s was trained with %s; its score belongs to that setting, so results under this "
                        "config are not what it learned: use the config it was trained with", path, ", ".join(changed))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare network inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def _strip_prefixes(key: str) -> str:
    while key.startswith(_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write `state` to `path`.

    `state` holds `model` (nn.Module), `ema`, `optimizer` (anything with `state_dict()`), `step` (int) and
    optional extras (`epoch`, RNG states, ...): objects with `state_dict()` are saved as their state dicts,
    everything else as is (keep extras to tensors, numbers, strings, lists and dicts so `weights_only` loading
    reads them). The file is written next to `path` and renamed over it, so an interrupted save never leaves a
    truncated checkpoint.
    """
    path = os.fspath(path)
    saved = {}
    for key, value in state.items():
        if key == "model":
            saved[key] = {"module." + k: v for k, v in unwrap_model(value).state_dict().items()}
        elif hasattr(value, "state_dict"):
            saved[key] = value.state_dict()
        else:
            saved[key] = value
    atomic_save(saved, path)


def atomic_save(obj: Any, path: str) -> None:
    """`torch.save` atomically (`utils/atomic.atomic_path`), creating the folder if needed. A write the system
    refuses (disk full, file-size limit) is a `WriteError` naming `path`; the previous file is kept."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as err:  # torch wraps the failed write of its file object
            if isinstance(err.__context__, OSError):
                raise err.__context__ from err
            raise


def weights_digest(weights: dict[str, Any]) -> str:
    """SHA-256 of a state dict: every entry's name, dtype, shape and bytes, in name order ("" when an entry is not
    a tensor)."""
    sha = hashlib.sha256()
    for key in sorted(weights):
        value = weights[key]
        if not torch.is_tensor(value):
            return ""
        value = value.detach().cpu().contiguous().reshape(-1)
        sha.update(f"{key}:{value.dtype}:{value.numel()};".encode())
        sha.update(value.view(torch.uint8).numpy())
    return sha.hexdigest()


def read_checkpoint(path: str | os.PathLike, device: str | torch.device) -> dict[str, Any]:
    """The content of checkpoint `path` (a dict with a `model` entry) on `device`; a file that cannot be read, is
    not a checkpoint or whose weights do not match their recorded `weights_sha256` is a `CheckpointError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found; check --workdir, sampling.folder / sampling.ckpt "
                                "or sampling.checkpoint")
    try:
        loaded = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for other files (KeyError for text)
        raise CheckpointError(f"cannot read checkpoint {path} (truncated, corrupt, or not a weights-only PyTorch "
                              f"file): {type(err).__name__}: {err}") from err
    if not isinstance(loaded, dict) or "model" not in loaded:
        found = sorted(loaded) if isinstance(loaded, dict) else type(loaded).__name__
        raise CheckpointError(f"{path} is not a training checkpoint: expected a dict with a 'model' entry, found "
                              f"{found}")
    recorded = loaded.get(WEIGHTS_DIGEST)
    if recorded is not None and (not isinstance(loaded["model"], dict) or weights_digest(loaded["model"]) != recorded):
        raise CheckpointError(f"checkpoint {path} is damaged: its weights do not match the SHA-256 recorded when it "
                              f"was exported; download it again, or export it again with `python -m runners.export "
                              f"<training checkpoint> {path}`")
    return loaded


def _listed(items: list[str]) -> str:
    shown = "\n    ".join(items[:_MAX_LISTED])
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"\n    {shown}{more}"


def _load_weights(path: str, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load `weights` (any prefixes) into `model` strictly; one error lists every mismatch."""
    weights = {_strip_prefixes(k): v for k, v in weights.items()}
    model = unwrap_model(model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in weights.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"checkpoint {path} does not fit the {type(model).__name__} network built from the config:"]
        if missing:
            parts.append(f"  {len(missing)} missing keys (in the model, not in the file):{_listed(missing)}")
        if unexpected:
            parts.append(f"  {len(unexpected)} unexpected keys (in the file, not in the model):{_listed(unexpected)}")
        if mismatched:
            parts.append(f"  {len(mismatched)} shape mismatches:{_listed(mismatched)}")
        parts.append(_CONFIG_HINT)
        raise CheckpointError("\n".join(parts))
    model.load_state_dict(weights, strict=True)


def load_checkpoint(path: str | os.PathLike, state: dict[str, Any], device: str | torch.device) -> dict[str, Any]:
    """Restore `state` (as given to `save_checkpoint`) from `path` in place and return it.

    The model is loaded strictly (with or without `module.` / `_orig_mod.` prefixes); `optimizer`, `ema` and
    other objects with `load_state_dict` are restored when both `state` and the file have them; plain entries of
    the file (`step`, `epoch`, ...) are copied into `state`.
    """
    path = os.fspath(path)
    loaded = read_checkpoint(path, device)
    _load_weights(path, state["model"], loaded["model"])
    for key, value in loaded.items():
        if key == "model":
            continue
        target = state.get(key)
        if hasattr(target, "load_state_dict"):
            target.load_state_dict(value)
        elif key not in ("optimizer", "ema"):
            state[key] = value
    for key in ("optimizer", "ema"):
        if key in state and key not in loaded:
            logging.warning("checkpoint %s has no %r entry; the %s starts fresh", path, key, key)
    return state


def load_model_weights(path: str | os.PathLike, model: nn.Module, use_ema: bool,
                       device: str | torch.device, record: dict[str, Any] | None = None) -> int:
    """Load the weights of checkpoint `path` into `model` for sampling and return the checkpoint's step.

    With `use_ema` the EMA averages replace the raw trainable parameters (buffers come from the raw weights); a
    file exported from the EMA (`weights: "ema"`, runners/export.py) holds them as its `model`.
    With `record` (the shaping keys of the current config), a checkpoint trained under other values of them is
    warned about (`check_config_record`).
    """
    path = os.fspath(path)
    loaded = read_checkpoint(path, device)
    if record is not None:
        check_config_record(path, loaded, record)
    _load_weights(path, model, loaded["model"])
    if use_ema and loaded.get("weights") != "ema":  # a file exported from the EMA (runners/export.py) already is it
        if "ema" not in loaded:
            raise CheckpointError(f"checkpoint {path} has no 'ema' entry; set sampling.use_ema=False to sample with "
                             "the raw weights")
        named = [(name, p) for name, p in unwrap_model(model).named_parameters() if p.requires_grad]
        shadows = loaded["ema"]["shadow_params"]
        if len(shadows) != len(named):
            raise CheckpointError(f"checkpoint {path}: the EMA holds {len(shadows)} parameters but the model has "
                               f"{len(named)} trainable parameters; {_CONFIG_HINT}")
        for (name, param), shadow in zip(named, shadows):
            if shadow.shape != param.shape:
                raise CheckpointError(f"checkpoint {path}: EMA parameter {name} has shape {tuple(shadow.shape)} "
                                   f"but the model's has {tuple(param.shape)}; {_CONFIG_HINT}")
        with torch.no_grad():
            for (_, param), shadow in zip(named, shadows):
                param.copy_(shadow)
    return int(loaded.get("step", 0))
