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

Each program owns ``ROWS`` consecutive rows of one sample (grid: samples x row blocks), so the per-sample
vectors (shift, scale, gate) are loaded once and the per-sample gradient sums are accumulated in registers;
the backward writes them as per-program partial sums that the host adds up (deterministic, no atomics).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def adaln_fwd_kernel(x_ptr, br_ptr, gate_ptr, w_ptr, b_ptr, shift_ptr, scale_ptr, xo_ptr, out_ptr, mean_ptr,
                     rstd_ptr, T, D, stride_mod, eps,
                     HAS_RESIDUAL: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    n = tl.program_id(0)
    rb = tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(ACC)
    b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(ACC)
    shift = tl.load(shift_ptr + n * stride_mod + cols, mask=cmask, other=0.0).to(ACC)
    scale1 = tl.load(scale_ptr + n * stride_mod + cols, mask=cmask, other=0.0).to(ACC) + 1.0
    if HAS_RESIDUAL:
        gate = tl.load(gate_ptr + n * stride_mod + cols, mask=cmask, other=0.0).to(ACC)
    for i in range(ROWS):
        t = rb * ROWS + i
        if t < T:
            row = n * T + t
            offs = row.to(tl.int64) * D + cols
            x = tl.load(x_ptr + offs, mask=cmask, other=0.0).to(ACC)
            if HAS_RESIDUAL:
                x += gate * tl.load(br_ptr + offs, mask=cmask, other=0.0).to(ACC)
                x = x.to(xo_ptr.dtype.element_ty)
                tl.store(xo_ptr + offs, x, mask=cmask)
                x = x.to(ACC)  # LayerNorm sees the stored (rounded) residual, as the unfused code does
            mean = tl.sum(x, axis=0) / D
            xc = tl.where(cmask, x - mean, 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
            y = xc * rstd * w + b
            tl.store(out_ptr + offs, (y * scale1 + shift).to(out_ptr.dtype.element_ty), mask=cmask)
            tl.store(mean_ptr + row, mean)
            tl.store(rstd_ptr + row, rstd)


@triton.jit
def adaln_bwd_kernel(dout_ptr, dxo_ptr, xo_ptr, br_ptr, gate_ptr, w_ptr, b_ptr, scale_ptr, mean_ptr, rstd_ptr,
                     dx_ptr, dbr_ptr, part_ptr, T, D, stride_mod, n_rb,
                     HAS_RESIDUAL: tl.constexpr, HAS_DXO: tl.constexpr, ROWS: tl.constexpr,
                     BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    n = tl.program_id(0)
    rb = tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(ACC)
    b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(ACC)
    scale1 = tl.load(scale_ptr + n * stride_mod + cols, mask=cmask, other=0.0).to(ACC) + 1.0
    if HAS_RESIDUAL:
        gate = tl.load(gate_ptr + n * stride_mod + cols, mask=cmask, other=0.0).to(ACC)
    acc_w = tl.zeros([BLOCK_D], dtype=ACC)
    acc_b = tl.zeros([BLOCK_D], dtype=ACC)
    acc_shift = tl.zeros([BLOCK_D], dtype=ACC)
    acc_scale = tl.zeros([BLOCK_D], dtype=ACC)
    acc_gate = tl.zeros([BLOCK_D], dtype=ACC)
    for i in range(ROWS):
        t = rb * ROWS + i
        if t < T:
            row = n * T + t
            offs = row.to(tl.int64) * D + cols
            mean = tl.load(mean_ptr + row)
            rstd = tl.load(rstd_ptr + row)
            xo = tl.load(xo_ptr + offs, mask=cmask, other=0.0).to(ACC)
            xhat = tl.where(cmask, (xo - mean) * rstd, 0.0)
            dout = tl.load(dout_ptr + offs, mask=cmask, other=0.0).to(ACC)
            g = dout * scale1
            acc_w += g * xhat
            acc_b += g
            acc_shift += dout
            acc_scale += dout * (xhat * w + b)
            dxhat = g * w
            c1 = tl.sum(dxhat, axis=0) / D
            c2 = tl.sum(dxhat * xhat, axis=0) / D
            dx = rstd * (dxhat - c1 - xhat * c2)
            if HAS_DXO:
                dx += tl.load(dxo_ptr + offs, mask=cmask, other=0.0).to(ACC)
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=cmask)
            if HAS_RESIDUAL:
                tl.store(dbr_ptr + offs, (dx * gate).to(dbr_ptr.dtype.element_ty), mask=cmask)
                acc_gate += dx * tl.load(br_ptr + offs, mask=cmask, other=0.0).to(ACC)
    # partial sums, (5, samples, row blocks, D): w, b, shift, scale, gate
    stride_q = tl.num_programs(0) * n_rb * D
    base = (n * n_rb + rb).to(tl.int64) * D + cols
    tl.store(part_ptr + base, acc_w, mask=cmask)
    tl.store(part_ptr + stride_q + base, acc_b, mask=cmask)
    tl.store(part_ptr + 2 * stride_q + base, acc_shift, mask=cmask)
    tl.store(part_ptr + 3 * stride_q + base, acc_scale, mask=cmask)
    if HAS_RESIDUAL:
        tl.store(part_ptr + 4 * stride_q + base, acc_gate, mask=cmask)
