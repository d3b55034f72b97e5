"""SS2D's output stage as one op: sum over scan directions, LayerNorm, SiLU gate.

The unfused code ends SS2D with

    y = ys.sum(2, dtype=float32)                     # (N, L, d) from the per-direction outputs (N, L, K, d)
    y = layer_norm(y, weight, bias, eps).to(dtype)   # nn.LayerNorm(d_inner)
    out = y * silu(z)                                # z: the gate half of the input projection

five memory-bound kernels forward and more backward, with an fp32 (N, L, d) tensor written and read between
each. ``gated_norm`` does the same in one pass each way: on the Triton route (``lamamba.ops.selective_scan.
scan_backend``: CUDA with Triton, or ``LAMAMBA_SCAN_BACKEND=triton``, which runs the kernels through Triton's
interpreter on CPU tensors when ``TRITON_INTERPRET=1``) as ``torch.library`` custom ops (one opaque node for
``torch.compile``, fake kernels for meta tensors), the kernels in ``lamamba.ops.gated_norm_kernels``;
elsewhere ``gated_norm_reference`` computes the same thing with PyTorch operations.

The backward returns the gradient of ``ys`` as one (N, L, d) tensor *expanded* over the K directions (stride
0): every direction receives the same gradient, and the scan's backward reads the expanded view as it is, so
the K copies are never written to memory. (The custom op itself returns the real (N, L, d) tensor; the expand
happens in the autograd formula, outside the op, because an op must not return views.)

Measured on an H200 (bf16 ys and z, N * L = 16384 tokens, d = 768; kernel time from the profiler): forward
42 us against 182 us for the unfused PyTorch code and 109 us for it under ``torch.compile``; forward and
backward 103 us against 529 us and 437 us. Moving the bytes alone would take about 31 us and 73 us.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lamamba.ops.selective_scan import scan_backend
from lamamba.ops.triton_common import (accumulation_dtype, check_device, grad_needed, next_power_of_2, sm_count,
                                       tl_dtype, unit_channel_stride)
from lamamba.ops.triton_launch import launch, precompile

__all__ = ["gated_norm", "gated_norm_reference"]


def gated_norm_reference(ys: Tensor, z: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5,
                         out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``LayerNorm(sum_k ys[:, :, k]) * silu(z)`` with PyTorch operations, in float32 (float64 for float64 ys)."""
    acc = torch.promote_types(ys.dtype, torch.float32)
    s = ys.sum(2, dtype=acc)
    y = F.layer_norm(s, (s.shape[-1],), weight.to(acc), bias.to(acc), eps)
    return (y * F.silu(z.to(acc))).to(out_dtype or z.dtype)


def gated_norm(ys: Tensor, z: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5,
               out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``out[n, l] = (LayerNorm_d(sum_k ys[n, l, k]) * weight + bias) * silu(z[n, l])``, (N, L, d) in ``out_dtype``
    (default: z's dtype). Differentiable in ``ys``, ``z``, ``weight`` and ``bias``.

    ``ys``: (N, L, K, d), the per-direction scan outputs; the sum, the statistics and the gate are computed
    in float32 (float64 for float64 ``ys``) and rounded once. ``z``: (N, L, d), any strides with unit channel
    stride (e.g. a half of ``chunk(2, -1)``: read in place). ``weight``, ``bias``: (d,).
    """
    _check(ys, z, weight, bias)
    out_dtype = out_dtype or z.dtype
    if scan_backend(ys.device) == "triton":
        args = (ys, z, weight, bias, float(eps), out_dtype, grad_needed(ys, z, weight, bias))
        traced = torch.compiler.is_compiling() or ys.device.type == "meta"
        return _fwd(*args)[0] if traced else _Eager.apply(*args)
    return gated_norm_reference(ys, z, weight, bias, eps, out_dtype)


def _check(ys: Tensor, z: Tensor, weight: Tensor, bias: Tensor) -> None:
    shapes = f"ys {tuple(ys.shape)}, z {tuple(z.shape)}, weight {tuple(weight.shape)}, bias {tuple(bias.shape)}"
    ok = ys.dim() == 4 and tuple(z.shape) == (ys.shape[0], ys.shape[1], ys.shape[3]) \
        and tuple(weight.shape) == (ys.shape[3],) and tuple(bias.shape) == (ys.shape[3],)
    if not ok:
        raise ValueError(f"gated_norm: expected ys (N, L, K, d), z (N, L, d), weight and bias (d,); got {shapes}")
    if any(t.device != ys.device for t in (z, weight, bias)):
        raise ValueError(f"gated_norm: all tensors must be on ys's device ({ys.device})")
    if not all(t.is_floating_point() for t in (ys, z, weight, bias)):
        raise ValueError("gated_norm: all tensors must be floating point")


# ------------------------------------------------------------------------------------------------
#                              Triton route: launch plan and custom ops
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GatedNormLaunch:
    """Tile sizes; replace ``LAUNCH`` (``dataclasses.replace``) to re-tune."""
    tile_elems: int = 2048           # forward: rows x padded channels per program
    elems_per_warp: int = 512        # forward: num_warps = tile elements / this, in [1, 8]
    bwd_tile_elems: int = 1024       # backward: the same two
    bwd_elems_per_warp: int = 256
    max_block_r: int = 64            # rows per program at most (small d)
    bwd_programs_per_sm: int = 4     # backward grid cap: dw/db partial buffer of (programs, d) floats
    bwd_num_stages: int = 3          # backward: software pipelining of the loop over row blocks


LAUNCH = GatedNormLaunch()


@dataclass(frozen=True)
class _Plan:
    block_r: int
    block_d: int
    num_warps: int
    n_blocks: int

    def bwd_grid(self, device: torch.device) -> tuple[int, int]:
        """(programs, row blocks per program) of the backward: at most ``bwd_programs_per_sm`` per SM."""
        cap = max(1, LAUNCH.bwd_programs_per_sm * sm_count(device))
        per_program = -(-self.n_blocks // min(cap, self.n_blocks))
        return -(-self.n_blocks // per_program), per_program


def _plan(n_rows: int, d: int, backward: bool = False) -> _Plan:
    return _plan_for(n_rows, d, backward, LAUNCH)


@functools.lru_cache(maxsize=None)
def _plan_for(n_rows: int, d: int, backward: bool, launch: GatedNormLaunch) -> _Plan:
    """Cached: this runs at every call, and eager small models are bound by host time."""
    tile = launch.bwd_tile_elems if backward else launch.tile_elems
    per_warp = launch.bwd_elems_per_warp if backward else launch.elems_per_warp
    block_d = next_power_of_2(d)
    block_r = max(1, min(launch.max_block_r, tile // block_d, next_power_of_2(n_rows)))
    warps = min(8, next_power_of_2(max(1, block_r * block_d // per_warp)))
    return _Plan(block_r, block_d, warps, -(-n_rows // block_r))


def _kernels(device: torch.device):
    """The kernel module (imports triton on first use, so that this module loads without it)."""
    from lamamba.ops import gated_norm_kernels

    check_device(device, gated_norm_kernels.gated_norm_fwd_kernel, "gated-norm")
    return gated_norm_kernels


def _fwd_impl(ys: Tensor, z: Tensor, weight: Tensor, bias: Tensor, eps: float, out_dtype: torch.dtype,
              save_sum: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(out (N, L, d) in ``out_dtype``, mean (N * L,), rstd (N * L,), the direction sum (N * L, d) if ``save_sum``
    else empty); statistics and sum in the accumulation dtype. The backward needs the sum, not ``ys``."""
    N, L, K, d = ys.shape
    ys, z = unit_channel_stride(ys), unit_channel_stride(z)
    acc = accumulation_dtype(ys.dtype)
    out = ys.new_empty((N, L, d), dtype=out_dtype)
    mean, rstd = (ys.new_empty((N * L,), dtype=acc) for _ in range(2))
    total = ys.new_empty((N * L, d) if save_sum else (0,), dtype=acc)
    if N * L == 0:
        return out, mean, rstd, total
    kernels = _kernels(ys.device)
    plan = _plan(N * L, d)
    launch(kernels.gated_norm_fwd_kernel, (plan.n_blocks,),
        ys, z, weight.contiguous(), bias.contiguous(), out, mean, rstd, total if save_sum else mean, N * L, L, d, eps,
        ys.stride(0), ys.stride(1), ys.stride(2), z.stride(0), z.stride(1), out.stride(0), out.stride(1),
        K=K, ACC=tl_dtype(acc), BLOCK_R=plan.block_r, BLOCK_D=plan.block_d, STORE_SUM=save_sum,
        num_warps=plan.num_warps)
    return out, mean, rstd, total


_fwd = torch.library.custom_op("lamamba::gated_norm_fwd", _fwd_impl, mutates_args=())


@_fwd.register_fake
def _(ys, z, weight, bias, eps, out_dtype, save_sum):
    precompile(_fwd_impl, ys, z, weight, bias, eps, out_dtype, save_sum)
    N, L, K, d = ys.shape
    acc = accumulation_dtype(ys.dtype)
    return (ys.new_empty((N, L, d), dtype=out_dtype), ys.new_empty((N * L,), dtype=acc),
            ys.new_empty((N * L,), dtype=acc), ys.new_empty((N * L, d) if save_sum else (0,), dtype=acc))


def _bwd_impl(dout: Tensor, total: Tensor, z: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, rstd: Tensor,
              ys_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(ds (N, L, d) in ``ys_dtype``: the gradient of each direction's ys, dz (N, L, d) contiguous, dweight, dbias),
    from the forward's direction sum ``total`` (N * L, d) and statistics."""
    N, L, d = z.shape
    z, dout = unit_channel_stride(z), unit_channel_stride(dout)
    ds = z.new_empty((N, L, d), dtype=ys_dtype)
    dz = z.new_empty((N, L, d))
    if N * L == 0:
        return ds, dz, torch.zeros_like(weight), torch.zeros_like(bias)
    kernels = _kernels(z.device)
    plan = _plan(N * L, d, backward=True)
    programs, per_program = plan.bwd_grid(z.device)
    part = z.new_empty((2, programs, d), dtype=total.dtype)                                  # dw, db per program
    launch(kernels.gated_norm_bwd_kernel, (programs,),
        dout, total, z, weight.contiguous(), bias.contiguous(), mean, rstd, ds, dz, part[0], part[1], N * L, L, d,
        per_program, dout.stride(0), dout.stride(1), z.stride(0), z.stride(1), ACC=tl_dtype(total.dtype),
        BLOCK_R=plan.block_r, BLOCK_D=plan.block_d, STAGES=LAUNCH.bwd_num_stages, num_warps=plan.num_warps)
    # one small launch for both sums (~3 us on an H200; torch's column reduction took ~8.5 us)
    dw, db = weight.new_empty(weight.shape), bias.new_empty(bias.shape)
    launch(kernels.partial_sums_kernel, (-(-d // 32), 2),
        part, dw, db, programs, d, BLOCK_P=128, BLOCK_D=32, STAGES=3, num_warps=4)
    return ds, dz, dw, db


_bwd = torch.library.custom_op("lamamba::gated_norm_bwd", _bwd_impl, mutates_args=())


@_bwd.register_fake
def _(dout, total, z, weight, bias, mean, rstd, ys_dtype):
    precompile(_bwd_impl, dout, total, z, weight, bias, mean, rstd, ys_dtype)
    N, L, d = z.shape
    return (z.new_empty((N, L, d), dtype=ys_dtype), z.new_empty((N, L, d)), weight.new_empty(weight.shape),
            bias.new_empty(bias.shape))


def _setup_context(ctx, inputs, output):
    ys, z, weight, bias, _, _, _ = inputs
    _, mean, rstd, total = output
    ctx.mark_non_differentiable(mean, rstd, total)
    ctx.ys_shape, ctx.ys_dtype = ys.shape, ys.dtype
    ctx.save_for_backward(total, z, weight, bias, mean, rstd)  # the sum, not ys: ys is freed after the forward


def _backward(ctx, dout, _dmean=None, _drstd=None, _dtotal=None, bwd=_bwd):
    total, z, weight, bias, mean, rstd = ctx.saved_tensors
    if total.numel() != z.numel():
        raise RuntimeError("gated_norm: the forward ran with save_sum=False (no direction sum kept), so it has no "
                           "backward; call gated_norm(), which keeps the sum whenever a gradient can be needed")
    ds, dz, dw, db = bwd(dout, total, z, weight, bias, mean, rstd, ctx.ys_dtype)
    # one gradient for all K directions: an expanded view (stride 0 over K), never K copies (module docstring)
    return ds.unsqueeze(2).expand(ctx.ys_shape), dz, dw, db, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The same forward and backward without the custom-op dispatch, whose per-call host overhead showed in
    launch-bound eager runs of small models; ``torch.compile`` traces the custom op."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _fwd_impl(*inputs)
        _setup_context(ctx, inputs, output)
        return output[0]

    @staticmethod
    def backward(ctx, dout):
        return _backward(ctx, dout, bwd=_bwd_impl)
