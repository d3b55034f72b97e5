"""The optimizer that ``lamamba train`` steps and ``lamamba bench`` times."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["adamw"]


def adamw(params: Iterable[torch.nn.Parameter], **kwargs: Any) -> torch.optim.AdamW:
    """AdamW with the fused (single-kernel) update where this PyTorch has it for the device: on GPUs the
    multi-tensor one was 12% of an XL step (PERFORMANCE.md); on a CPU the default per-tensor loop took 15 ms of
    the digits demo's ~250 ms step, the fused one 2.5 ms (PyTorch >= 2.4; older ones fall back)."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except RuntimeError:  # "`fused=True` requires all the params to be ... of supported devices"
        return torch.optim.AdamW(params, **kwargs)
