"""Launch of the fused gated-residual + LayerNorm + AdaLN kernels (``lamamba.ops.triton_adaln_kernels``) as
``torch.library`` custom ops: one opaque node for ``torch.compile``, meta shapes for tracing. Under
``TRITON_INTERPRET=1`` (set before triton is first imported) the kernels also run on CPU tensors (tests).
Called through ``lamamba.ops.fused_adaln.add_norm_modulate``, which checks shapes and picks the route.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from lamamba.ops import triton_adaln_kernels as kernels
from lamamba.ops.triton_common import check_device, next_power_of_2, sm_count, tl_dtype
from lamamba.ops.triton_launch import launch, precompile

@dataclass(frozen=True)
class AdaLNLaunch:
    """How a fused AdaLN kernel blocks its rows; replace ``FORWARD`` / ``BACKWARD`` (``dataclasses.replace``) to
    re-tune (benchmarks/adaln_launch_sweep.py)."""
    tile_elements: int = 4096   # BLOCK_R x BLOCK_D per tile: rows processed together by one program
    row_target: int = 8         # programs per SM the row blocking aims for (several tiles per program below it)
    warp_elements: int = 512    # tile elements per warp (16 per thread), at most 8 warps


# H200 sweep (docs/PERFORMANCE.md, session 9): 4 warps of 32 elements per thread beat 8 of 16 in both kernels at
# LaMamba-Diff-XL's widths; the backward (172 registers, so one 8-warp program per SM) also wants few programs with
# many tiles each: -29% (S stage 1) to -59% (S stage 3) GPU time against the earlier shared rule
FORWARD = AdaLNLaunch(warp_elements=1024)
BACKWARD = AdaLNLaunch(row_target=2, warp_elements=1024)


@functools.lru_cache(maxsize=None)
def _launch(N: int, T: int, D: int, device: torch.device, cfg: AdaLNLaunch) -> tuple[int, int, int, int, int]:
    """(tiles per program, programs per sample, BLOCK_R, BLOCK_D, num_warps); plain integer arithmetic, cached
    (this runs at every call: eager small models are bound by host time)."""
    block_d = next_power_of_2(D)
    block_r = 1 << (max(1, min(32, cfg.tile_elements // block_d, next_power_of_2(T))).bit_length() - 1)
    n_tiles = -(-T // block_r)
    tiles = max(1, (N * n_tiles) // (cfg.row_target * sm_count(device)))
    return tiles, -(-n_tiles // tiles), block_r, block_d, max(1, min(8, block_r * block_d // cfg.warp_elements))


def _vectors(*ts: Optional[Tensor]) -> tuple[list[Optional[Tensor]], int]:
    """The per-sample vectors as (N, D) views sharing one row stride (the AdaLN output's slices do)."""
    flat = [None if t is None else t.reshape(t.shape[0], -1) for t in ts]
    strides = {t.stride(0) for t in flat if t is not None}
    if len(strides) > 1 or any(t is not None and t.stride(1) != 1 for t in flat):
        flat = [None if t is None else t.contiguous() for t in flat]
        strides = {t.stride(0) for t in flat if t is not None}
    return flat, strides.pop()


def _acc(x: Tensor, branch: Optional[Tensor], res_dtype: torch.dtype, out_dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype: float64 when any activation is float64 (tests), else float32."""
    dtypes = (x.dtype, res_dtype, out_dtype) + (() if branch is None else (branch.dtype,))
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _fwd_impl(x: Tensor, branch: Optional[Tensor], gate: Optional[Tensor], weight: Tensor, bias: Tensor,
              shift: Tensor, scale: Tensor, eps: float, res_dtype: torch.dtype,
              out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_out (empty without a branch), out, mean, rstd); x (N, T, D) contiguous."""
    N, T, D = x.shape
    check_device(x.device, kernels.adaln_fwd_kernel, "AdaLN")
    has_res = branch is not None
    (gate, shift, scale), stride_mod = _vectors(gate, shift, scale)
    x_out = x.new_empty(x.shape, dtype=res_dtype) if has_res else x.new_empty((0,), dtype=res_dtype)
    out = x.new_empty(x.shape, dtype=out_dtype)
    acc = _acc(x, branch, res_dtype, out_dtype)
    mean, rstd = (x.new_empty((N * T,), dtype=acc) for _ in range(2))
    tiles, n_pb, block_r, block_d, warps = _launch(N, T, D, x.device, FORWARD)
    launch(kernels.adaln_fwd_kernel, (N, n_pb),
        x, branch if has_res else x, gate if has_res else shift, weight, bias, shift, scale,
        x_out if has_res else out, out, mean, rstd, T, D, stride_mod, eps, tiles,
        HAS_RESIDUAL=has_res, BLOCK_R=block_r, BLOCK_D=block_d, ACC=tl_dtype(acc), num_warps=warps)
    return x_out, out, mean, rstd


_fwd = torch.library.custom_op("lamamba::adaln_fwd", _fwd_impl, mutates_args=())


@_fwd.register_fake
def _(x, branch, gate, weight, bias, shift, scale, eps, res_dtype, out_dtype):
    precompile(_fwd_impl, x, branch, gate, weight, bias, shift, scale, eps, res_dtype, out_dtype)
    N, T, D = x.shape
    x_out = x.new_empty(x.shape if branch is not None else (0,), dtype=res_dtype)
    acc = _acc(x, branch, res_dtype, out_dtype)
    return (x_out, x.new_empty(x.shape, dtype=out_dtype), x.new_empty((N * T,), dtype=acc),
            x.new_empty((N * T,), dtype=acc))


def _bwd_impl(dout: Tensor, dxo: Optional[Tensor], xo: Tensor, branch: Optional[Tensor], gate: Optional[Tensor],
              weight: Tensor, bias: Tensor, scale: Tensor, mean: Tensor, rstd: Tensor,
              x_dtype: torch.dtype) -> list[Tensor]:
    """Gradients (x, branch, gate, weight, bias, shift, scale); empty tensors for an absent branch/gate."""
    N, T, D = xo.shape
    has_res = branch is not None
    (gate, scale), stride_mod = _vectors(gate, scale)
    dout = dout.contiguous()
    dxo = None if dxo is None else dxo.contiguous()
    dx = xo.new_empty(xo.shape, dtype=x_dtype)
    dbr = torch.empty_like(branch) if has_res else xo.new_empty((0,))
    tiles, n_pb, block_r, block_d, warps = _launch(N, T, D, xo.device, BACKWARD)
    part = xo.new_empty((5 if has_res else 4, N, n_pb, D), dtype=mean.dtype)
    launch(kernels.adaln_bwd_kernel, (N, n_pb),
        dout, dxo if dxo is not None else dout, xo, branch if has_res else xo, gate if has_res else scale,
        weight, bias, scale, mean, rstd, dx, dbr if has_res else dx, part, T, D, stride_mod, n_pb, tiles,
        HAS_RESIDUAL=has_res, HAS_DXO=dxo is not None, BLOCK_R=block_r, BLOCK_D=block_d, ACC=tl_dtype(mean.dtype),
        num_warps=warps)
    dw, db = weight.new_empty(weight.shape), bias.new_empty(bias.shape)
    dshift, dscale = xo.new_empty((N, D), dtype=mean.dtype), xo.new_empty((N, D), dtype=scale.dtype)
    dgate = xo.new_empty((N, D), dtype=gate.dtype) if has_res else xo.new_empty((0,))
    launch(kernels.adaln_partial_sums_kernel, (-(-D // 32), N + 1),
        part, dw, db, dshift, dscale, dgate if has_res else dscale, N, n_pb, D, HAS_RESIDUAL=has_res, BLOCK_P=32,
        BLOCK_D=32, num_warps=4)
    return [dx, dbr, dgate, dw, db, dshift, dscale]


_bwd = torch.library.custom_op("lamamba::adaln_bwd", _bwd_impl, mutates_args=())


@_bwd.register_fake
def _(dout, dxo, xo, branch, gate, weight, bias, scale, mean, rstd, x_dtype):
    precompile(_bwd_impl, dout, dxo, xo, branch, gate, weight, bias, scale, mean, rstd, x_dtype)
    N, T, D = xo.shape
    has_res = branch is not None
    vec = xo.new_empty((N, D), dtype=scale.dtype)
    return [xo.new_empty(xo.shape, dtype=x_dtype), branch.new_empty(branch.shape) if has_res else xo.new_empty((0,)),
            xo.new_empty((N, D), dtype=gate.dtype) if has_res else xo.new_empty((0,)),
            weight.new_empty(weight.shape), bias.new_empty(bias.shape), xo.new_empty((N, D), dtype=mean.dtype),
            vec]


def _setup_context(ctx, inputs, output):
    x, branch, gate, weight, bias, shift, scale, eps, res_dtype, out_dtype = inputs
    x_out, _, mean, rstd = output
    ctx.has_res = branch is not None
    ctx.x_dtype, ctx.shift_dtype, ctx.gate_shape, ctx.vec_shapes = x.dtype, shift.dtype, \
        None if gate is None else gate.shape, (shift.shape, scale.shape)
    ctx.save_for_backward(x_out if ctx.has_res else x, branch, gate, weight, bias, scale, mean, rstd)


def _backward(ctx, dxo, dout, dmean=None, drstd=None, bwd=_bwd):
    xo, branch, gate, weight, bias, scale, mean, rstd = ctx.saved_tensors
    dx, dbr, dgate, dw, db, dshift, dscale = bwd(dout, dxo if ctx.has_res else None, xo, branch, gate, weight,
                                                 bias, scale, mean, rstd, ctx.x_dtype)
    if not ctx.has_res:
        return dx, None, None, dw, db, dshift.to(ctx.shift_dtype).view(ctx.vec_shapes[0]), \
            dscale.view(ctx.vec_shapes[1]), None, None, None
    return dx, dbr, dgate.view(ctx.gate_shape), dw, db, dshift.to(ctx.shift_dtype).view(ctx.vec_shapes[0]), \
        dscale.view(ctx.vec_shapes[1]), None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The same forward and backward without the custom-op dispatch, whose per-call host overhead (tens of
    microseconds) showed in launch-bound eager runs of small models; ``torch.compile`` traces the custom op."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _fwd_impl(*inputs)
        _setup_context(ctx, inputs, output)
        return output[0], output[1]

    @staticmethod
    def backward(ctx, dxo, dout):
        return _backward(ctx, dxo, dout, bwd=_bwd_impl)


def add_norm_modulate(x: Tensor, branch: Optional[Tensor], gate: Optional[Tensor], weight: Tensor, bias: Tensor,
                      shift: Tensor, scale: Tensor, eps: float, res_dtype: torch.dtype,
                      out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(x_out, out) in x's shape; ``x_out`` is empty when there is no branch (the caller keeps x)."""
    shape = x.shape
    N, D = shape[0], shape[-1]
    x3 = x.contiguous().view(N, -1, D)
    br3 = None if branch is None else branch.contiguous().view(N, -1, D)
    args = (x3, br3, gate, weight, bias, shift, scale, eps, res_dtype, out_dtype)
    traced = torch.compiler.is_compiling() or x.device.type == "meta"
    x_out, out = _fwd(*args)[:2] if traced else _Eager.apply(*args)
    return (x_out.view(shape) if branch is not None else x_out), out.view(shape)
