"""SS2D's four-direction selective scan with its routing (cross-scan, scan, cross-merge) as one op.

Every projection in SS2D (``x_proj``, ``dt_proj``) acts per token, so it commutes with the scan-path
permutations: the model computes them once in pixel order, and only the recurrence itself has to walk
the paths. The scan takes everything in pixel order, channels-last, for an H x W map (L = H * W):

    x            (batch, L, d)        the scanned signal u (after the depthwise conv and SiLU)
    delta        (batch, L, K, d)     raw time steps per direction (bias and softplus applied inside)
    B, C         (batch, L, K, N)     input/output projections per direction (shared by the d channels)
    A            (K*d, N)             negative decay rates, direction-major as the parameter tensors
    D, delta_bias (K*d,)

``ss2d_scan_directions`` returns each direction's output in pixel order, (batch, L, K, d) in x's dtype;
``ss2d_selective_scan`` their sum, (batch, L, d) in float32 (float64 for float64 inputs), as SS2D uses it.
On CUDA with Triton the kernels (``lamamba.ops.triton_ss2d``) walk the paths arithmetically and never
materialise permuted copies; elsewhere the reference gathers, calls ``selective_scan`` and scatters back.

``delta`` is the largest input (K times x) and SS2D makes it from a rank-R projection (``lamamba.ops.time_steps.
dt_projection``) of a tensor R/d its size: given ``delta_from=(dt_raw, weight)``, the backward recomputes delta
instead of keeping it, in eager and compiled mode alike on the Triton route (the custom op keeps the recipe, so
AOT autograd has no delta to save: session 9 found compiled steps keeping it), in eager mode on the reference route
(``recompute_in_backward``).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from lamamba.ops.recompute import recompute_in_backward
from lamamba.ops.scan_paths import cross_scan, scan_paths
from lamamba.ops.selective_scan import scan_backend, selective_scan
from lamamba.ops.time_steps import dt_projection


def ss2d_scan_directions_reference(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                                   delta_bias: Tensor, H: int, W: int) -> Tensor:
    """Gather along each path, scan all directions as K*d channels, put each direction back in pixel order."""
    b, L, d = x.shape
    paths, inverse = scan_paths(H, W, x.device)
    K = paths.shape[0]
    f = torch.promote_types(x.dtype, torch.float32)  # accumulate in float32 (float64 stays float64)
    xs = cross_scan(x.to(f), paths).permute(0, 1, 3, 2).reshape(b, K * d, L)       # (b, K*d, L)
    dts = delta.to(f).gather(1, _path_index(paths, b, d)).permute(0, 2, 3, 1).reshape(b, K * d, L)
    Bs = B.to(f).gather(1, _path_index(paths, b, B.shape[-1])).permute(0, 2, 3, 1)  # (b, K, N, L)
    Cs = C.to(f).gather(1, _path_index(paths, b, C.shape[-1])).permute(0, 2, 3, 1)
    ys = selective_scan(xs, dts, A, Bs, Cs, D, None, delta_bias, delta_softplus=True)  # (b, K*d, L) scan order
    ys = ys.view(b, K, d, L).permute(0, 3, 1, 2)                                       # (b, L, K, d) scan order
    return ys.gather(1, _path_index(inverse, b, d)).to(x.dtype)                        # pixel order


def _path_index(paths: Tensor, batch: int, channels: int) -> Tensor:
    """Index for ``gather(1, .)`` on a (batch, L, K, channels) tensor: element [b, s, k, c] <- [b, paths[k, s], k, c]."""
    return paths.t()[None, :, :, None].expand(batch, -1, -1, channels)


def ss2d_scan_directions(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                         delta_bias: Tensor, H: int, W: int,
                         delta_from: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
    """Each direction's scan output in pixel order, (batch, L, K, d) in x's dtype. Differentiable.

    ``delta_from``: ``(dt_raw, weight)`` with ``delta == dt_projection(dt_raw, weight)``; the backward recomputes
    delta from them instead of keeping it (module docstring). Gradients still flow to delta (and from there to
    whatever made it): the pair is only a recipe.
    """
    _check(x, delta, A, B, C, D, delta_bias, H, W)
    if scan_backend(x.device) == "triton":
        from lamamba.ops import triton_ss2d
        return triton_ss2d.ss2d_scan_directions(x, delta, A, B, C, D, delta_bias, H, W, delta_from)
    with recompute_in_backward(delta, dt_projection, *delta_from) if delta_from else contextlib.nullcontext():
        return ss2d_scan_directions_reference(x, delta, A, B, C, D, delta_bias, H, W)


def ss2d_selective_scan(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                        delta_bias: Tensor, H: int, W: int) -> Tensor:
    """Four-direction selective scan of SS2D, summed over directions: (batch, L, d) in float32. Differentiable."""
    ys = ss2d_scan_directions(x, delta, A, B, C, D, delta_bias, H, W)
    return ys.sum(2, dtype=torch.promote_types(x.dtype, torch.float32))


def _check(x, delta, A, B, C, D, delta_bias, H, W) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, L, d); got {tuple(x.shape)}")
    b, L, d = x.shape
    if H * W != L:
        raise ValueError(f"the map is {H}x{W} = {H * W} pixels but x has L = {L}")
    K, N = 4, A.shape[-1]
    expected = {"delta": (delta, (b, L, K, d)), "A": (A, (K * d, N)), "B": (B, (b, L, K, N)),
                "C": (C, (b, L, K, N)), "D": (D, (K * d,)), "delta_bias": (delta_bias, (K * d,))}
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for x {tuple(x.shape)} and {K} paths; "
                             f"got {tuple(t.shape)}")
    if any(t.device != x.device for t in (delta, A, B, C, D, delta_bias)):
        raise ValueError("all SS2D scan tensors must be on x's device")
