"""SS2D's four-direction selective scan with its routing (cross-scan, scan, cross-merge) as one op.

Every projection in SS2D (``x_proj``, ``dt_proj``) acts per token, so it commutes with the scan-path
permutations: the model computes them once in pixel order, and only the recurrence itself has to walk
the paths. ``ss2d_selective_scan`` takes everything in pixel order, channels-last:

    x            (batch, L, d)        the scanned signal u (after the depthwise conv and SiLU)
    delta        (batch, L, K, d)     raw time steps per direction (bias and softplus applied inside)
    B, C         (batch, L, K, N)     input/output projections per direction (shared by the d channels)
    A            (K*d, N)             negative decay rates, direction-major as the parameter tensors
    D, delta_bias (K*d,)
    paths        (K, L) int64         the scan orders of ``lamamba.ops.scan_paths``
    returns      (batch, L, d) float32 (float64 for float64 inputs), the sum over the K directions, back in pixel order

On CUDA with Triton the fused kernel reads through the path indices and never materialises the K
permuted copies; elsewhere the reference gathers, calls ``selective_scan`` and merges.
"""
from __future__ import annotations

import torch
from torch import Tensor

from lamamba.ops.scan_paths import cross_merge, cross_scan
from lamamba.ops.selective_scan import scan_backend, selective_scan


def ss2d_selective_scan_reference(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                                  delta_bias: Tensor, paths: Tensor, inverse: Tensor) -> Tensor:
    """Gather along each path, scan all directions as K*d channels, un-permute and sum."""
    b, L, d = x.shape
    K = paths.shape[0]
    f = torch.promote_types(x.dtype, torch.float32)  # accumulate in float32 (float64 stays float64)
    xs = cross_scan(x.to(f), paths).permute(0, 1, 3, 2).reshape(b, K * d, L)       # (b, K*d, L)
    dts = delta.to(f).gather(1, _path_index(paths, b, d)).permute(0, 2, 3, 1).reshape(b, K * d, L)
    Bs = B.to(f).gather(1, _path_index(paths, b, B.shape[-1])).permute(0, 2, 3, 1)  # (b, K, N, L)
    Cs = C.to(f).gather(1, _path_index(paths, b, C.shape[-1])).permute(0, 2, 3, 1)
    ys = selective_scan(xs, dts, A, Bs, Cs, D, None, delta_bias, delta_softplus=True)  # (b, K*d, L)
    return cross_merge(ys.view(b, K, d, L).transpose(2, 3), inverse)                   # (b, L, d)


def _path_index(paths: Tensor, batch: int, channels: int) -> Tensor:
    """Index for ``gather(1, .)`` on a (batch, L, K, channels) tensor: element [b, s, k, c] <- [b, paths[k, s], k, c]."""
    return paths.t()[None, :, :, None].expand(batch, -1, -1, channels)


def ss2d_selective_scan(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                        delta_bias: Tensor, paths: Tensor, inverse: Tensor) -> Tensor:
    """Four-direction selective scan of SS2D in pixel order (see module doc). Differentiable."""
    if scan_backend(x.device) == "triton":
        from lamamba.ops import triton_scan
        return triton_scan.ss2d_selective_scan(x, delta, A, B, C, D, delta_bias, paths, inverse)
    return ss2d_selective_scan_reference(x, delta, A, B, C, D, delta_bias, paths, inverse)
