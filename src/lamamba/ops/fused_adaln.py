"""The LaMamba block's glue as one op: gated residual, LayerNorm and AdaLN modulation.

Between the branches of a block (SS2D, attention, MLP) the unfused code runs

    x   = x + gate * branch                     # 2 kernels (mul, add), 2 more in the backward
    out = LayerNorm(x) * (1 + scale) + shift    # LayerNorm + addcmul, 3-4 more in the backward

``add_norm_modulate`` does this in one memory pass forward and one backward (Triton kernels in
``lamamba.ops.triton_adaln_kernels``), which matters most where the model is launch- and memory-bound (small
models, eager mode). ``gate``, ``shift`` and ``scale`` are per-sample vectors (N, D), for example slices of
the block's AdaLN modulation output. On CUDA (the same switch as the scan kernels: ``LAMAMBA_SCAN_BACKEND``)
the kernels run as ``torch.library`` custom ops, opaque to ``torch.compile``; elsewhere
``add_norm_modulate_reference`` computes the same thing with PyTorch operations. Statistics are float32;
the residual is rounded to its dtype before normalisation, as in the unfused code.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lamamba.ops.selective_scan import scan_backend

__all__ = ["add_norm_modulate", "add_norm_modulate_reference"]


def add_norm_modulate_reference(x: Tensor, branch: Optional[Tensor], gate: Optional[Tensor], weight: Tensor,
                                bias: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-5,
                                out_dtype: Optional[torch.dtype] = None) -> tuple[Tensor, Tensor]:
    """PyTorch composition with the same result (up to rounding) as the fused op."""
    vec = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)  # (N, D) -> broadcast over the token axes
    if branch is not None:
        x = x + gate.reshape(vec) * branch
    y = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    out = torch.addcmul(shift.reshape(vec), y, 1 + scale.reshape(vec))
    return x, out if out_dtype is None else out.to(out_dtype)


def add_norm_modulate(x: Tensor, branch: Optional[Tensor], gate: Optional[Tensor], weight: Tensor, bias: Tensor,
                      shift: Tensor, scale: Tensor, eps: float = 1e-5,
                      out_dtype: Optional[torch.dtype] = None) -> tuple[Tensor, Tensor]:
    """``x_out = x + gate * branch`` (``x_out = x`` when ``branch`` is None), ``out = LayerNorm(x_out; weight,
    bias) * (1 + scale) + shift``; returns ``(x_out, out)``. Differentiable in every tensor.

    ``x``, ``branch``: (N, ..., D), channels last; ``gate``, ``shift``, ``scale``: (N, D) (or any shape with
    N * D elements, e.g. (N, 1, 1, D)); ``weight``, ``bias``: (D,). ``out_dtype`` (default: the promoted
    dtype of ``x_out`` and ``shift``, as the unfused code gives) lets a caller under autocast receive the
    modulated activations in the autocast dtype directly.
    """
    N, D = x.shape[0], x.shape[-1]
    if (branch is None) != (gate is None):
        raise ValueError("add_norm_modulate: give both branch and gate, or neither")
    if branch is not None and branch.shape != x.shape:
        raise ValueError(f"add_norm_modulate: branch {tuple(branch.shape)} must have x's shape {tuple(x.shape)}")
    for name, t in (("shift", shift), ("scale", scale), ("gate", gate)):
        if t is not None and t.numel() != N * D:
            raise ValueError(f"add_norm_modulate: {name} must hold one vector of {D} per sample ({N}); "
                             f"got shape {tuple(t.shape)}")
    if weight.shape != (D,) or bias.shape != (D,):
        raise ValueError(f"add_norm_modulate: weight and bias must be ({D},)")
    if scan_backend(x.device) != "triton":
        return add_norm_modulate_reference(x, branch, gate, weight, bias, shift, scale, eps, out_dtype)
    res_dtype = x.dtype if branch is None else torch.promote_types(torch.promote_types(x.dtype, branch.dtype),
                                                                   gate.dtype)
    if out_dtype is None:
        out_dtype = torch.promote_types(res_dtype, torch.promote_types(shift.dtype, scale.dtype))
    from lamamba.ops import triton_adaln as triton_ops
    x_out, out = triton_ops.add_norm_modulate(x, branch, gate, weight, bias, shift, scale, float(eps),
                                              res_dtype, out_dtype)
    return (x if branch is None else x_out), out
