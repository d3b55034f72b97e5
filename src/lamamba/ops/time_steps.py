"""SS2D's time steps: each direction's low-rank projection of the per-token ``dt`` features.

Its own module because both the model (``lamamba.models.lamamba``) and the scan's backward (``lamamba.ops.ss2d_scan``,
``lamamba.ops.triton_ss2d``), which recomputes the time steps instead of keeping them, call it.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dt_projection"]


def dt_projection(dt_raw: Tensor, weight: Tensor, align: Optional[int] = None) -> Tensor:
    """Each direction's low-rank time-step projection, ``einsum("blkr,kdr->blkd", dt_raw, weight)``: (N, L, K, d).

    Computed as one matrix product per direction over all N * L tokens, with the rank R padded with zeros to a
    multiple of ``align`` (default: 8 for CUDA tensors, else 1, so that FLOP counts on meta tensors stay exact; the
    padded columns multiply zeros): operands R = 6..80 wide miss the 16-byte alignment that tensor-core kernels
    need, and on an H200 cuBLAS ran the weight gradient in a slow fallback kernel (3.2 ms per call at
    LaMamba-Diff-S's first stage, 16 ms of a 91 ms training step; docs/PERFORMANCE.md, session 5). One product per
    direction (not per sample and direction) makes the weight gradient a single product over the tokens, without
    a per-sample copy of the weight and a sum over samples (session 10). The result is a direction-major view
    (strides (L*d, d, N*L*d, 1)); the scan reads any strides.
    """
    N, L, K, R = dt_raw.shape
    pad = -R % (align or (8 if dt_raw.is_cuda else 1))
    a = F.pad(dt_raw.permute(2, 0, 1, 3), (0, pad)).reshape(K, N * L, R + pad)    # (K, N*L, R8)
    w = F.pad(weight, (0, pad)).transpose(1, 2)                                   # (K, R8, d)
    return torch.bmm(a, w).view(K, N, L, -1).permute(1, 2, 0, 3)                  # (N, L, K, d)
