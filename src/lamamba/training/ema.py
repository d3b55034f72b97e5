"""Exponential moving average of the model weights (DiT / SPEC 7.5).

``ema <- decay * ema + (1 - decay) * model`` over the parameters after every optimizer step; buffers are
constants of the architecture and are copied once. The EMA model is a float32 copy initialised to the
model's weights, kept in eval mode without gradients. The paper uses ``decay = 0.9999`` from the first
step (a horizon of ~10,000 steps). Short runs (the built-in demo) use ``warmup=True``: the decay of update
``n`` (counting from 0) is ``min(decay, (1 + n) / (10 + n))``, the schedule of TensorFlow's
``ExponentialMovingAverage(num_updates=...)``, so early weights are forgotten quickly.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["EMA"]


class EMA:
    """An EMA copy of ``model`` (float32, eval mode, no gradients).

    Args:
        model: the trained module (unwrapped: not the DDP or ``torch.compile`` wrapper).
        decay: the target decay in [0, 1).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` at update ``n``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.num_updates = 0
        self._pairs = self._match(model)

    def _match(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ema_params = dict(self.model.named_parameters())
        names = [name for name, _ in model.named_parameters()]
        if sorted(names) != sorted(ema_params):
            raise ValueError("the EMA model and the trained model have different parameters")
        return [ema_params[n] for n in names], [p for _, p in model.named_parameters()]

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module | None = None) -> None:
        """One EMA step towards the current weights of the model given at construction."""
        if model is not None:
            self._pairs = self._match(model)
        ema_params, params = self._pairs
        weight = 1.0 - self.current_decay()
        # ema + w * (p - ema) == decay * ema + (1 - decay) * p
        torch._foreach_lerp_(ema_params, [p.detach().float() for p in params], weight)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.model.load_state_dict(state)
        self.num_updates = int(num_updates)
