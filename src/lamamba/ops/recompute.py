"""Recompute one cheap tensor in the backward instead of keeping it for the backward.

``recompute_in_backward(t, fn, *args)`` is a context manager: inside it, whenever autograd saves ``t`` (the
same storage, offset, shape, strides and dtype) for a backward, it keeps the recipe ``fn(*args)`` instead, and
the backward recomputes ``t`` when it needs it. SS2D's reference scan route uses it for the time steps ``delta``
(batch, L, 4, d; ``lamamba.ops.ss2d_scan``): the rank-R projection that makes them reads a tensor R/d their size.
The Triton route keeps the recipe inside its custom op instead, which also holds under ``torch.compile``.

``fn`` must be deterministic and give ``t`` again from ``args`` (detached, cast to ``t``'s dtype when they are
floating point, as autocast casts them). Eager mode only: under ``torch.compile`` the context does nothing
(saved-tensor hooks are not traced; AOT autograd decides what to keep), nor without gradients, nor inside
other saved-tensor hooks (activation checkpointing drops everything of its region anyway, and hooks do not
nest: ours would take the scan's tensors out of its hands).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["recompute_in_backward"]


def _key(t: Tensor) -> tuple:
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device


class _Recipe:
    def __init__(self, fn: Callable[..., Tensor], args: tuple, dtype: torch.dtype):
        self.fn, self.dtype = fn, dtype
        self.args = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)

    def __call__(self) -> Tensor:
        args = [a.to(self.dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in self.args]
        with torch.no_grad(), torch.autocast(args[0].device.type, enabled=False):
            return self.fn(*args)


@contextlib.contextmanager
def recompute_in_backward(t: Tensor, fn: Callable[..., Tensor], *args) -> Iterator[None]:
    """Inside: autograd keeps ``fn(*args)``'s recipe wherever it would keep ``t`` (see the module docstring)."""
    if (torch.compiler.is_compiling() or not torch.is_grad_enabled()
            or torch._C._autograd._top_saved_tensors_default_hooks(False) is not None):
        yield
        return
    key = _key(t)
    recipe = _Recipe(fn, args, t.dtype)

    def pack(saved: Tensor):
        return recipe if saved is t or _key(saved) == key else saved

    def unpack(packed):
        return packed() if packed is recipe else packed

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
