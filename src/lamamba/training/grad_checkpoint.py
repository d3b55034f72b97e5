"""Activation (gradient) checkpointing without touching the model code.

Each LaMamba or DiT block is switched, on that instance only, to a subclass whose ``forward`` calls the
original through ``torch.utils.checkpoint.checkpoint``: its activations are dropped after the forward pass
and recomputed in the backward pass, trading about one extra forward for memory that no longer grows with
depth. The subclass only checkpoints in training mode with gradients enabled, so evaluation and sampling run
the plain block. Parameter names, ``state_dict`` and ``copy.deepcopy`` (e.g. the EMA copy) are unaffected.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from lamamba.models.dit import DiTBlock
from lamamba.models.lamamba import LaMambaBlock

__all__ = ["CHECKPOINTED_BLOCKS", "enable_gradient_checkpointing"]

CHECKPOINTED_BLOCKS: tuple[type[nn.Module], ...] = (LaMambaBlock, DiTBlock)
_SUBCLASSES: dict[type, type] = {}


class _Checkpointed:
    """Mixin placed in front of a block class: checkpoints ``forward`` while training."""

    def forward(self, *args, **kwargs):
        plain = super().forward
        if self.training and torch.is_grad_enabled():
            # non-reentrant: works with keyword arguments, autocast and inputs that need no grad
            return checkpoint(plain, *args, use_reentrant=False, **kwargs)
        return plain(*args, **kwargs)


def _checkpointed_class(cls: type) -> type:
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = type(f"Checkpointed{cls.__name__}", (_Checkpointed, cls), {"__module__": __name__})
    return _SUBCLASSES[cls]


def enable_gradient_checkpointing(model: nn.Module,
                                  block_types: tuple[type[nn.Module], ...] = CHECKPOINTED_BLOCKS) -> int:
    """Checkpoint every submodule of ``model`` of one of ``block_types``; returns how many blocks that is.

    Idempotent. Raises ``ValueError`` if ``model`` has no such block.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, block_types):
            if not isinstance(module, _Checkpointed):
                module.__class__ = _checkpointed_class(type(module))
            count += 1
    if count == 0:
        names = ", ".join(t.__name__ for t in block_types)
        raise ValueError(f"gradient checkpointing found no block ({names}) in {type(model).__name__}")
    return count
