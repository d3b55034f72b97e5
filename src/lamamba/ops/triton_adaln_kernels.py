"""Triton kernels of ``lamamba.ops.triton_adaln`` (routing: ``lamamba.ops.fused_adaln``): gated residual,
LayerNorm and AdaLN modulation in one pass.

Forward, per token row r of sample n (D channels; arithmetic in ``ACC``: float32, float64 for float64 inputs):

    x_out = x + gate[n] * branch                 (HAS_RESIDUAL; else x_out = x)
    y     = LayerNorm(x_out) * w + b             (mean, rstd saved per row)
    out   = y * (1 + scale[n]) + shift[n]

Backward, given d_out and d_x_out (the gradient that reaches x_out along the residual stream):

    g      = d_out * (1 + scale[n]);   d_w += g * xhat;   d_b += g;   d_shift[n] += d_out;   d_scale[n] += d_out * y
    d_xhat = g * w;   d_x_out += rstd * (d_xhat - mean(d_xhat) - xhat * mean(d_xhat * xhat))
    d_x    = d_x_out;  d_branch = d_x_out * gate[n];  d_gate[n] += d_x_out * branch

Each program owns ``TILES`` consecutive tiles of ``BLOCK_R`` rows x all D channels of one sample (grid:
samples x row blocks): rows of a tile are processed together (one reduction per row, many rows in flight),
the per-sample vectors (shift, scale, gate) are loaded once, and the per-sample gradient sums accumulate in
registers; the backward writes them as per-program partial sums that ``adaln_partial_sums_kernel`` adds up in
one launch (deterministic, no atomics; it replaced ~9 small PyTorch reductions and casts per call, host time
that launch-bound small models pay).

Registers: a tile is 4,096 elements, so every (BLOCK_R, BLOCK_D) array costs a thread 16 registers at 8 warps.
Within a program ``scale`` is one sample's, so the backward keeps only three running sums, ``sum d_out``,
``sum d_out * xhat`` and ``sum d_x_out * branch``, and derives the five partials from them at the end
(``d_w = (1 + scale) sum d_out xhat``, ``d_b = (1 + scale) sum d_out``, ``d_scale = w sum d_out xhat + b sum
d_out``); element offsets are 32-bit within a sample (the sample's base is a 64-bit scalar).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _vector(ptr, offset, cols, cmask, ACC: tl.constexpr):
    """A (1, BLOCK_D) row of a per-channel vector (``offset``: the sample's row for per-sample vectors)."""
    return tl.load(ptr + offset + cols, mask=cmask, other=0.0).to(ACC)[None, :]


@triton.jit
def _tile(pb, i, T, D, TILES, cols, cmask, BLOCK_R: tl.constexpr):
    """Rows of tile ``i`` of program ``pb`` in its sample: (row mask, element mask, rows, element offsets), all
    relative to the sample's first row (32-bit: one sample's T x D elements)."""
    t = (pb * TILES + i) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = t < T
    return rmask, rmask[:, None] & cmask[None, :], t, t[:, None] * D + cols[None, :]


@triton.jit
def adaln_fwd_kernel(x_ptr, br_ptr, gate_ptr, w_ptr, b_ptr, shift_ptr, scale_ptr, xo_ptr, out_ptr, mean_ptr,
                     rstd_ptr, T, D, stride_mod, eps, TILES,
                     HAS_RESIDUAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    n = tl.program_id(0)
    pb = tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    w = _vector(w_ptr, 0, cols, cmask, ACC)
    b = _vector(b_ptr, 0, cols, cmask, ACC)
    shift = _vector(shift_ptr, n * stride_mod, cols, cmask, ACC)
    scale1 = _vector(scale_ptr, n * stride_mod, cols, cmask, ACC) + 1.0
    if HAS_RESIDUAL:
        gate = _vector(gate_ptr, n * stride_mod, cols, cmask, ACC)
    row0 = n.to(tl.int64) * T                                   # the sample's first row
    x_ptr, br_ptr, xo_ptr, out_ptr = x_ptr + row0 * D, br_ptr + row0 * D, xo_ptr + row0 * D, out_ptr + row0 * D
    mean_ptr, rstd_ptr = mean_ptr + row0, rstd_ptr + row0
    for i in range(TILES):
        rmask, mask, row, offs = _tile(pb, i, T, D, TILES, cols, cmask, BLOCK_R)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        if HAS_RESIDUAL:
            x += gate * tl.load(br_ptr + offs, mask=mask, other=0.0).to(ACC)
            x = x.to(xo_ptr.dtype.element_ty)
            tl.store(xo_ptr + offs, x, mask=mask)
            x = x.to(ACC)  # LayerNorm sees the stored (rounded) residual, as the unfused code does
        mean = tl.sum(x, axis=1) / D
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
        y = xc * rstd[:, None] * w + b
        tl.store(out_ptr + offs, (y * scale1 + shift).to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_ptr + row, mean, mask=rmask)
        tl.store(rstd_ptr + row, rstd, mask=rmask)


@triton.jit
def adaln_bwd_kernel(dout_ptr, dxo_ptr, xo_ptr, br_ptr, gate_ptr, w_ptr, b_ptr, scale_ptr, mean_ptr, rstd_ptr,
                     dx_ptr, dbr_ptr, part_ptr, T, D, stride_mod, n_pb, TILES,
                     HAS_RESIDUAL: tl.constexpr, HAS_DXO: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    n = tl.program_id(0)
    pb = tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    w = _vector(w_ptr, 0, cols, cmask, ACC)
    b = _vector(b_ptr, 0, cols, cmask, ACC)
    scale1 = _vector(scale_ptr, n * stride_mod, cols, cmask, ACC) + 1.0
    if HAS_RESIDUAL:
        gate = _vector(gate_ptr, n * stride_mod, cols, cmask, ACC)
    row0 = n.to(tl.int64) * T                                   # the sample's first row
    dout_ptr, dxo_ptr, xo_ptr, br_ptr = dout_ptr + row0 * D, dxo_ptr + row0 * D, xo_ptr + row0 * D, br_ptr + row0 * D
    dx_ptr, dbr_ptr, mean_ptr, rstd_ptr = dx_ptr + row0 * D, dbr_ptr + row0 * D, mean_ptr + row0, rstd_ptr + row0
    sum_dout = tl.zeros([BLOCK_R, BLOCK_D], dtype=ACC)          # sum of d_out
    sum_dout_xhat = tl.zeros([BLOCK_R, BLOCK_D], dtype=ACC)     # sum of d_out * xhat
    sum_gate = tl.zeros([BLOCK_R, BLOCK_D], dtype=ACC)          # sum of d_x_out * branch
    for i in range(TILES):
        rmask, mask, row, offs = _tile(pb, i, T, D, TILES, cols, cmask, BLOCK_R)
        mean = tl.load(mean_ptr + row, mask=rmask, other=0.0)
        rstd = tl.load(rstd_ptr + row, mask=rmask, other=0.0)
        xo = tl.load(xo_ptr + offs, mask=mask, other=0.0).to(ACC)
        xhat = tl.where(mask, (xo - mean[:, None]) * rstd[:, None], 0.0)
        dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(ACC)
        sum_dout += dout
        sum_dout_xhat += dout * xhat
        dxhat = dout * scale1 * w
        c1 = tl.sum(dxhat, axis=1) / D
        c2 = tl.sum(dxhat * xhat, axis=1) / D
        dx = rstd[:, None] * (dxhat - c1[:, None] - xhat * c2[:, None])
        if HAS_DXO:
            dx += tl.load(dxo_ptr + offs, mask=mask, other=0.0).to(ACC)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if HAS_RESIDUAL:
            tl.store(dbr_ptr + offs, (dx * gate).to(dbr_ptr.dtype.element_ty), mask=mask)
            sum_gate += dx * tl.load(br_ptr + offs, mask=mask, other=0.0).to(ACC)
    # partial sums, (5, samples, row blocks, D): w, b, shift, scale, gate
    s_dout = tl.sum(sum_dout, axis=0)[None, :]
    s_dout_xhat = tl.sum(sum_dout_xhat, axis=0)[None, :]
    stride_q = tl.num_programs(0) * n_pb * D
    base = (n * n_pb + pb).to(tl.int64) * D + cols[None, :]
    m = cmask[None, :]
    tl.store(part_ptr + base, scale1 * s_dout_xhat, mask=m)
    tl.store(part_ptr + stride_q + base, scale1 * s_dout, mask=m)
    tl.store(part_ptr + 2 * stride_q + base, s_dout, mask=m)
    tl.store(part_ptr + 3 * stride_q + base, w * s_dout_xhat + b * s_dout, mask=m)
    if HAS_RESIDUAL:
        tl.store(part_ptr + 4 * stride_q + base, tl.sum(sum_gate, axis=0)[None, :], mask=m)


@triton.jit
def adaln_partial_sums_kernel(part_ptr, dw_ptr, db_ptr, dshift_ptr, dscale_ptr, dgate_ptr, N, n_pb, D,
                              HAS_RESIDUAL: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """The backward's partial sums ``part`` (Q, N, n_pb, D) (Q = 5: w, b, shift, scale, gate; 4 without a
    residual branch), reduced in a fixed order and stored in each output's dtype. Grid (column blocks, N + 1):
    program (c, n < N) writes sample n's dshift, dscale, dgate; program (c, N) sums every sample's rows into
    dw and db."""
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.program_id(1)
    cmask = cols < D
    rows = tl.arange(0, BLOCK_P)
    per_q = N.to(tl.int64) * n_pb * D
    if n < N:
        base = n.to(tl.int64) * n_pb * D
        acc_shift = tl.zeros([BLOCK_P, BLOCK_D], dtype=part_ptr.dtype.element_ty)
        acc_scale = tl.zeros([BLOCK_P, BLOCK_D], dtype=part_ptr.dtype.element_ty)
        acc_gate = tl.zeros([BLOCK_P, BLOCK_D], dtype=part_ptr.dtype.element_ty)
        for p0 in range(0, n_pb, BLOCK_P):
            p = p0 + rows
            mask = (p < n_pb)[:, None] & cmask[None, :]
            offs = base + p.to(tl.int64)[:, None] * D + cols[None, :]
            acc_shift += tl.load(part_ptr + 2 * per_q + offs, mask=mask, other=0.0)
            acc_scale += tl.load(part_ptr + 3 * per_q + offs, mask=mask, other=0.0)
            if HAS_RESIDUAL:
                acc_gate += tl.load(part_ptr + 4 * per_q + offs, mask=mask, other=0.0)
        out = n.to(tl.int64) * D + cols
        tl.store(dshift_ptr + out, tl.sum(acc_shift, axis=0).to(dshift_ptr.dtype.element_ty), mask=cmask)
        tl.store(dscale_ptr + out, tl.sum(acc_scale, axis=0).to(dscale_ptr.dtype.element_ty), mask=cmask)
        if HAS_RESIDUAL:
            tl.store(dgate_ptr + out, tl.sum(acc_gate, axis=0).to(dgate_ptr.dtype.element_ty), mask=cmask)
    else:
        acc_w = tl.zeros([BLOCK_P, BLOCK_D], dtype=part_ptr.dtype.element_ty)
        acc_b = tl.zeros([BLOCK_P, BLOCK_D], dtype=part_ptr.dtype.element_ty)
        total = N * n_pb
        for r0 in range(0, total, BLOCK_P):
            r = r0 + rows
            mask = (r < total)[:, None] & cmask[None, :]
            offs = r.to(tl.int64)[:, None] * D + cols[None, :]
            acc_w += tl.load(part_ptr + offs, mask=mask, other=0.0)
            acc_b += tl.load(part_ptr + per_q + offs, mask=mask, other=0.0)
        tl.store(dw_ptr + cols, tl.sum(acc_w, axis=0).to(dw_ptr.dtype.element_ty), mask=cmask)
        tl.store(db_ptr + cols, tl.sum(acc_b, axis=0).to(db_ptr.dtype.element_ty), mask=cmask)
