"""Launch of the SS2D scan kernels (``lamamba.ops.triton_ss2d_kernels``) as ``torch.library`` custom ops.

``ss2d_scan_directions`` is the Triton route of ``lamamba.ops.ss2d_scan.ss2d_scan_directions``: pixel-order,
channels-last inputs, one output slice per direction, differentiable in every tensor argument. The custom ops
make the scan one opaque node for ``torch.compile`` and give meta tensors their shapes.

Launch configuration (``SS2D_LAUNCH``, an ``SS2DLaunchConfig``; the environment variable ``LAMAMBA_SS2D_LAUNCH``,
e.g. ``block_t=16,bwd_num_warps=2``, overrides fields without code changes): tiles of ``block_t`` steps x ``block_d``
channels x ``block_n`` (the state size rounded up to a power of two; ``block_d * block_n <= state_lanes``);
the length is split into chunks until the grid has ``programs_per_sm`` programs per SM (or every chunk is
one tile). Under ``TRITON_INTERPRET=1`` (set before triton is first imported) the kernels also run on CPU
tensors, through Triton's interpreter (slow; for tests).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
import triton
from torch import Tensor

from lamamba.ops import triton_ss2d_kernels as kernels
from lamamba.ops.time_steps import dt_projection
from lamamba.ops.triton_common import (accumulation_dtype, check_device, grad_needed, sm_count, tl_dtype,
                                       unit_channel_stride)
from lamamba.ops.triton_launch import launch, precompile

K = 4  # scan directions


@dataclass(frozen=True)
class SS2DLaunchConfig:
    """Tile sizes and launch parameters; replace ``SS2D_LAUNCH`` (``dataclasses.replace``) to re-tune."""
    block_t: int = 16           # scan steps per tile (H200 sweep, docs/PERFORMANCE.md: 16 beat 32 and 64 backward)
    state_lanes: int = 256      # block_d * block_n at most
    max_block_d: int = 32       # channels per program
    num_warps: int = 1          # forward kernel: one warp keeps the tile's scan inside the warp (shuffles only)
    bwd_num_warps: int = 1      # backward kernel
    num_stages: int = 2         # forward kernel: software-pipeline the tile loads of the time loop
    bwd_num_stages: int = 1     # backward kernel
    programs_per_sm: int = 8    # split the length into chunks until the grid has this many programs per SM
    max_chunks: int = 64
    fast_math: int = 1          # fp32 on a GPU: the hardware's approximate exp and log (ops/triton_ss2d_kernels.py)


SS2D_LAUNCH = SS2DLaunchConfig()
LAUNCH_ENV = "LAMAMBA_SS2D_LAUNCH"


def launch_config() -> SS2DLaunchConfig:
    """``SS2D_LAUNCH`` with the overrides of ``LAMAMBA_SS2D_LAUNCH`` (``field=int,...``), if set."""
    return _with_overrides(SS2D_LAUNCH, os.environ.get(LAUNCH_ENV, ""))


@functools.lru_cache(maxsize=16)
def _with_overrides(base: SS2DLaunchConfig, spec: str) -> SS2DLaunchConfig:
    fields = {f.name for f in dataclasses.fields(SS2DLaunchConfig)}
    overrides = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = (part.strip() for part in item.partition("="))
        if name not in fields or not value.isdigit() or int(value) < (0 if name == "fast_math" else 1):
            raise ValueError(f"{LAUNCH_ENV}={spec!r}: each item must be FIELD=POSITIVE_INT (fast_math=0 or 1) "
                             f"with FIELD one of {', '.join(sorted(fields))}")
        overrides[name] = int(value)
    return dataclasses.replace(base, **overrides)


@dataclass(frozen=True)
class _Plan:
    """Tiles, chunks and grid of one problem."""
    batch: int
    H: int
    W: int
    d: int
    N: int
    block_t: int
    block_d: int
    block_n: int
    chunk_tiles: int
    n_chunks: int
    cuda: bool

    @property
    def n_tiles(self) -> int:
        return triton.cdiv(self.H * self.W, self.block_t)

    @property
    def n_dblocks(self) -> int:
        return triton.cdiv(self.d, self.block_d)

    @property
    def grid(self) -> tuple[int, int]:
        return (K * self.n_dblocks * self.n_chunks, self.batch)

    @property
    def even(self) -> bool:
        """Every tile full: no masks in the time loop (the last chunk's loop stops at the last tile)."""
        return self.H * self.W % self.block_t == 0 and self.d % self.block_d == 0 and self.N == self.block_n

    def scalars(self) -> tuple:
        return (self.H, self.W, self.d, self.N, self.n_dblocks, self.chunk_tiles, self.n_chunks, self.n_tiles)

    def meta(self, acc: torch.dtype, backward: bool) -> dict:
        cfg = launch_config()
        return dict(ACC=tl_dtype(acc), EVEN=self.even, FAST=bool(cfg.fast_math) and self.cuda and acc == torch.float32,
                    BLOCK_T=self.block_t,
                    BLOCK_D=self.block_d, BLOCK_N=self.block_n,
                    STAGES=cfg.bwd_num_stages if backward else cfg.num_stages,
                    num_warps=cfg.bwd_num_warps if backward else cfg.num_warps)

    def carry(self, like: Tensor, acc: torch.dtype) -> Tensor:
        """Per-chunk maps: (2, batch, 4, n_chunks, d, N) (products, then states)."""
        shape = (2, self.batch, K, self.n_chunks, self.d, self.N) if self.n_chunks > 1 else (0,)
        return like.new_empty(shape, dtype=acc)


def _plan(batch: int, H: int, W: int, d: int, N: int, device: torch.device) -> _Plan:
    cfg = launch_config()
    block_n = triton.next_power_of_2(N)
    block_d = max(1, min(cfg.max_block_d, cfg.state_lanes // block_n, triton.next_power_of_2(d)))
    n_tiles = triton.cdiv(H * W, cfg.block_t)
    programs = batch * K * triton.cdiv(d, block_d)
    want = triton.cdiv(cfg.programs_per_sm * sm_count(device), programs)
    chunk_tiles = triton.cdiv(n_tiles, max(1, min(want, cfg.max_chunks, n_tiles)))
    return _Plan(batch, H, W, d, N, cfg.block_t, block_d, block_n, chunk_tiles, triton.cdiv(n_tiles, chunk_tiles),
                 device.type == "cuda")


def _strides(x: Tensor, delta: Tensor, B: Tensor) -> tuple:
    return (x.stride(0), x.stride(1), delta.stride(0), delta.stride(1), delta.stride(2), *B.stride())


def _bc(B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """B and C as the kernels read them: any strides, but the same for both (views of one projection)."""
    return (B, C) if B.stride() == C.stride() else (B.contiguous(), C.contiguous())


def _prepare(x, delta, A, B, C, D, delta_bias, H: int, W: int) -> tuple[tuple[Tensor, ...], _Plan, torch.dtype]:
    """The inputs as the kernels read them (channels-last signals, B and C with equal strides, contiguous
    parameters), the launch plan and the accumulation dtype; shared by the forward and backward ops."""
    check_device(x.device, kernels.ss2d_fwd_kernel, "SS2D")
    # the kernels' offsets within one sample are 32-bit: the largest is a step's row times the pixels
    row = max(x.stride(1), delta.stride(1), B.stride(1), C.stride(1), K * x.shape[2], K * A.shape[1])
    if H * W >= 2 ** 21 or H * W * row >= 2 ** 31:
        raise ValueError(f"SS2D scan: a {H}x{W} map with {x.shape[2]} channels is beyond the Triton kernels' 32-bit "
                         "offsets within a sample (at most 2**21 pixels and 2**31 elements per sample); use smaller "
                         "maps (a larger patch size) or the PyTorch reference scan")
    B, C = _bc(B, C)
    inputs = (unit_channel_stride(x), unit_channel_stride(delta), A.contiguous(), B, C, D.contiguous(), delta_bias.contiguous())
    return inputs, _plan(x.shape[0], H, W, x.shape[2], A.shape[1], x.device), accumulation_dtype(x.dtype)


# ------------------------------------------------------------------------------------------------
#                                        Custom ops
# ------------------------------------------------------------------------------------------------

def _fwd_impl(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, delta_bias: Tensor,
         H: int, W: int, save_states: bool, dt_raw: Optional[Tensor] = None,
         dt_weight: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """ys (batch, L, 4, d) in x's dtype and, with ``save_states``, the tile-start states for the backward.
    ``dt_raw``, ``dt_weight``: delta's recipe (``delta == dt_projection(dt_raw, dt_weight)``), kept for the backward
    instead of delta; the forward does not read them."""
    (x, delta, A, B, C, D, delta_bias), plan, acc = _prepare(x, delta, A, B, C, D, delta_bias, H, W)
    ys = x.new_empty((x.shape[0], H * W, K, x.shape[2]))
    ckpt = x.new_empty((x.shape[0], K, plan.n_tiles, plan.d, plan.N) if save_states else (0,), dtype=acc)
    carry = plan.carry(x, acc)
    strides = (*_strides(x, delta, B), *ys.stride()[:3])
    args = (x, delta, A, B, C, D, delta_bias, ys, ckpt, carry, *plan.scalars(), *strides)
    meta = plan.meta(acc, backward=False)
    if plan.n_chunks > 1:
        launch(kernels.ss2d_fwd_kernel, plan.grid, *args, STATE_ONLY=True, STORE_CKPT=False, **meta)
    launch(kernels.ss2d_fwd_kernel, plan.grid, *args, STATE_ONLY=False, STORE_CKPT=save_states, **meta)
    return ys, ckpt


_fwd = torch.library.custom_op("lamamba::ss2d_scan_fwd", _fwd_impl, mutates_args=())


@_fwd.register_fake
def _(x, delta, A, B, C, D, delta_bias, H, W, save_states, dt_raw=None, dt_weight=None):
    precompile(_fwd_impl, x, delta, A, B, C, D, delta_bias, H, W, save_states, dt_raw, dt_weight)
    plan_tiles = triton.cdiv(H * W, launch_config().block_t)
    shape = (x.shape[0], K, plan_tiles, x.shape[2], A.shape[1]) if save_states else (0,)
    return x.new_empty((x.shape[0], H * W, K, x.shape[2])), x.new_empty(shape, dtype=accumulation_dtype(x.dtype))


def _delta(delta: Optional[Tensor], dt_raw: Optional[Tensor], dt_weight: Optional[Tensor],
           dtype: Optional[torch.dtype]) -> Tensor:
    """delta itself, or recomputed from its recipe as the forward's autocast made it (the projection in its dtype)."""
    if delta is not None:
        return delta
    device = dt_raw.device.type                      # meta tensors (tracing, FLOP counts) have no autocast
    with torch.no_grad(), torch.autocast(device, enabled=False) if device in ("cuda", "cpu") else nullcontext():
        return dt_projection(dt_raw.to(dtype), dt_weight.to(dtype))


def _bwd_impl(dys: Tensor, x: Tensor, delta: Optional[Tensor], A: Tensor, B: Tensor, C: Tensor, D: Tensor,
         delta_bias: Tensor, ckpt: Tensor, H: int, W: int, dt_raw: Optional[Tensor] = None,
         dt_weight: Optional[Tensor] = None, delta_dtype: Optional[torch.dtype] = None) -> list[Tensor]:
    """Gradients w.r.t. (x, delta, A, B, C, D, delta_bias), in the inputs' shapes and dtypes, but x's per direction
    (batch, L, 4, d): the autograd formula sums them, where a compiled graph fuses the sum into the next operation
    (the x projection's gradient is added to it). Without ``delta``, it
    is recomputed from ``dt_raw`` and ``dt_weight`` here, inside the op: recomputed in the autograd formula instead,
    AOT autograd would merge it with the forward's projection (common subexpressions) and keep delta after all."""
    delta = _delta(delta, dt_raw, dt_weight, delta_dtype)
    (x, delta, A, B, C, D, delta_bias), plan, acc = _prepare(x, delta, A, B, C, D, delta_bias, H, W)
    dys = unit_channel_stride(dys)
    batch, L, d = x.shape
    dxs = x.new_empty((batch, L, K, d))                      # one slice per direction, summed below
    ddelta = torch.empty_like(delta)  # the kernel writes it with delta's strides (the fake says the same)
    dB, dC = (x.new_empty((plan.n_dblocks, batch, L, K, plan.N), dtype=acc) for _ in range(2))
    parts = (batch * plan.n_chunks, K * d)
    dA, dD, dbias = x.new_empty((*parts, plan.N), dtype=acc), x.new_empty(parts, dtype=acc), \
        x.new_empty(parts, dtype=acc)
    carry = plan.carry(x, acc)
    strides = (*_strides(x, delta, B), *dys.stride()[:3], *dxs.stride()[:3])
    args = (dys, x, delta, A, B, C, D, delta_bias, ckpt, carry, dxs, ddelta, dB, dC, dA, dD, dbias,
            *plan.scalars(), *strides)
    meta = plan.meta(acc, backward=True)
    if plan.n_chunks > 1:
        launch(kernels.ss2d_bwd_kernel, plan.grid, *args, STATE_ONLY=True, **meta)
    launch(kernels.ss2d_bwd_kernel, plan.grid, *args, STATE_ONLY=False, **meta)
    return [dxs, ddelta, dA.sum(0).to(A.dtype), dB.sum(0).to(B.dtype),
            dC.sum(0).to(C.dtype), dD.sum(0).to(D.dtype), dbias.sum(0).to(delta_bias.dtype)]


_bwd = torch.library.custom_op("lamamba::ss2d_scan_bwd", _bwd_impl, mutates_args=())


@_bwd.register_fake
def _(dys, x, delta, A, B, C, D, delta_bias, ckpt, H, W, dt_raw=None, dt_weight=None, delta_dtype=None):
    precompile(_bwd_impl, dys, x, delta, A, B, C, D, delta_bias, ckpt, H, W, dt_raw, dt_weight, delta_dtype)
    delta = _delta(delta, dt_raw, dt_weight, delta_dtype)
    ddelta = torch.empty_like(unit_channel_stride(delta))  # delta's layout, as the kernel writes it (often K-major)
    return [x.new_empty((x.shape[0], x.shape[1], K, x.shape[2])), ddelta, A.new_empty(A.shape), B.new_empty(B.shape),
            C.new_empty(C.shape), D.new_empty(D.shape), delta_bias.new_empty(delta_bias.shape)]


def _setup_context(ctx, inputs, output):
    x, delta, A, B, C, D, delta_bias, H, W, _, dt_raw, dt_weight = inputs
    ctx.H, ctx.W, ctx.recompute, ctx.delta_dtype = H, W, dt_raw is not None, delta.dtype
    # delta (K times x's size) or, given, its recipe: the inputs of the rank-R projection that made it
    kept = (dt_raw, dt_weight) if ctx.recompute else (delta,)
    ctx.save_for_backward(x, A, B, C, D, delta_bias, output[1], *kept)


def _backward(ctx, dys, dckpt):
    x, A, B, C, D, delta_bias, ckpt, *kept = ctx.saved_tensors
    delta, dt_raw, dt_weight = (None, *kept) if ctx.recompute else (*kept, None, None)
    dxs, *grads = _bwd(dys, x, delta, A, B, C, D, delta_bias, ckpt, ctx.H, ctx.W, dt_raw, dt_weight, ctx.delta_dtype)
    # sum(2) accumulates half types in float32 and rounds once, like sum(2, dtype=float32).to(x.dtype) but without
    # that form's float32 copy of all of dxs (2x its bytes, written and read again; session 10 in PERFORMANCE.md)
    return (dxs.sum(2), *grads, None, None, None, None, None)


_fwd.register_autograd(_backward, setup_context=_setup_context)


def ss2d_scan_directions(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                         delta_bias: Tensor, H: int, W: int,
                         delta_from: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
    """Per-direction SS2D scan outputs (batch, L, 4, d) in x's dtype (shapes and ``delta_from`` in
    ``lamamba.ops.ss2d_scan``).

    The tile-start states are kept for the backward only when a gradient can be needed.
    """
    save_states = grad_needed(x, delta, A, B, C, D, delta_bias)
    ys, _ = _fwd(x, delta, A, B, C, D, delta_bias, H, W, save_states, *(delta_from or (None, None)))
    return ys
