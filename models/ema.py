"""Exponential moving average of the trainable parameters, in the published checkpoint format.

`state_dict()` is `{"decay", "num_updates", "shadow_params"}` with `shadow_params` a list in the order of the
model's trainable `parameters()` (score_sde_pytorch / HFS-SDE `models/ema.py`).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable

import torch


def _trainable(parameters: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [p for p in parameters if p.requires_grad]


class ExponentialMovingAverage:
    """Shadow copies `s` of the trainable parameters `p`, updated as `s ← s − (1 − d)(s − p)`.

    With `use_num_updates`, the decay of the n-th update is `d = min(decay, (1 + n) / (10 + n))`, so early
    averages follow the weights closely. Shadow tensors live on the device of the parameters.
    """

    def __init__(self, parameters: Iterable[torch.Tensor], decay: float, use_num_updates: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1] (config model.ema_rate), got {decay}")
        self.decay = decay
        self.num_updates: int | None = 0 if use_num_updates else None
        self.shadow_params = [p.detach().clone() for p in _trainable(parameters)]
        self.collected_params: list[torch.Tensor] = []

    def _matching(self, parameters: Iterable[torch.Tensor]) -> list[torch.Tensor]:
        params = _trainable(parameters)
        if len(params) != len(self.shadow_params):
            raise ValueError(f"the EMA tracks {len(self.shadow_params)} trainable parameters but "
                             f"{len(params)} were given; pass the parameters of the model it was built from")
        return params

    @torch.no_grad()
    def update(self, parameters: Iterable[torch.Tensor]) -> None:
        """Move the shadow parameters towards `parameters` (call after every optimizer step)."""
        params = self._matching(parameters)
        decay = self.decay
        if self.num_updates is not None:
            self.num_updates += 1
            decay = min(decay, (1 + self.num_updates) / (10 + self.num_updates))
        torch._foreach_lerp_(self.shadow_params, params, 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.Tensor]) -> None:
        """Overwrite the trainable `parameters` with the averages."""
        for shadow, param in zip(self.shadow_params, self._matching(parameters)):
            param.copy_(shadow)

    @torch.no_grad()
    def store(self, parameters: Iterable[torch.Tensor]) -> None:
        """Keep a copy of `parameters`, e.g. before `copy_to` for an evaluation with the averages."""
        self.collected_params = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.Tensor]) -> None:
        """Put back the parameters saved by `store`."""
        params = list(parameters)
        if len(params) != len(self.collected_params):
            raise ValueError(f"restore got {len(params)} parameters but store kept {len(self.collected_params)}; "
                             "call store(model.parameters()) first, with the same model")
        for saved, param in zip(self.collected_params, params):
            param.copy_(saved)

    @contextlib.contextmanager
    def average_parameters(self, parameters: Iterable[torch.Tensor]):
        """Swap the averages into `parameters` while the block runs; the weights are restored afterwards (also
        when the block raises)."""
        parameters = list(parameters)
        self.store(parameters)
        self.copy_to(parameters)
        try:
            yield
        finally:
            self.restore(parameters)

    def state_dict(self) -> dict[str, Any]:
        """`{"decay": float, "num_updates": int | None, "shadow_params": list of tensors}` (published format)."""
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow_params": self.shadow_params}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a published-format state, copying the averages into the existing shadow tensors (device kept)."""
        missing = {"decay", "num_updates", "shadow_params"} - set(state_dict)
        if missing:
            raise ValueError(f"EMA state lacks {sorted(missing)}; expected keys decay, num_updates, shadow_params")
        shadows = state_dict["shadow_params"]
        if len(shadows) != len(self.shadow_params):
            raise ValueError(f"EMA state holds {len(shadows)} shadow parameters but the model has "
                             f"{len(self.shadow_params)} trainable parameters: it belongs to a different network "
                             "(check model.nf, ch_mult, num_res_blocks, attn_resolutions, data.image_size)")
        for i, (loaded, own) in enumerate(zip(shadows, self.shadow_params)):
            if loaded.shape != own.shape:
                raise ValueError(f"EMA shadow parameter {i} has shape {tuple(loaded.shape)} in the state but "
                                 f"{tuple(own.shape)} in the model: it belongs to a different network")
        for loaded, own in zip(shadows, self.shadow_params):
            own.copy_(loaded)
        self.decay = state_dict["decay"]
        self.num_updates = state_dict["num_updates"]
