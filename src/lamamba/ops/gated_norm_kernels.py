"""Triton kernels of SS2D's output stage: direction sum, LayerNorm, SiLU gate, in one memory pass each way.

Per token (a *row*) with the K per-direction scan outputs ``ys[k]`` (d channels each) and the gate ``z``::

    s    = sum_k ys[k]                       (accumulated in ACC: float32, float64 for float64 inputs)
    xhat = (s - mean(s)) * rstd,   rstd = 1 / sqrt(var(s) + eps)        (biased variance, as nn.LayerNorm)
    yn   = xhat * w + b
    out  = yn * silu(z),           silu(z) = z * sigmoid(z)             (in ACC, rounded once at the store)

**Forward.** One program normalises ``BLOCK_R`` rows; each row is held whole (``BLOCK_D`` = d rounded up to a
power of two, masked), so the statistics need no second pass over memory. It writes ``out`` and the row's
``mean`` and ``rstd`` (ACC), which the backward reuses instead of recomputing the two reductions, and, when a
backward will follow (``STORE_SUM``), the direction sum ``s`` (ACC, contiguous): the backward reads it instead
of the K direction outputs, so those need not be kept for it (half the bytes of K = 4 bf16 outputs, a quarter
of fp32 ones), as the unfused code keeps only LayerNorm's fp32 input.

**Backward.** With ``dyn = dout * silu(z)`` and ``dxhat = dyn * w``::

    ds    = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))      (the same for every direction k)
    dz    = dout * yn * sigmoid(z) * (1 + z * (1 - sigmoid(z)))
    dw    = sum_rows dyn * xhat,      db = sum_rows dyn

``xhat`` is recomputed from the saved sum ``s`` and statistics. ``ds`` is written once per row, not
once per direction: the host hands it to the scan's backward as a view expanded over K (stride 0), which the
scan kernels read as they are. The backward grid is capped (a few programs per SM); each program walks a
contiguous run of row blocks (software-pipelined, ``STAGES``), keeps its ``dw``/``db`` sums in registers and
writes them once to a (programs, d) buffer that ``partial_sums_kernel`` reduces: deterministic, no atomics,
and a buffer much smaller than one row per row block would need.

Row ``r`` of an (N, L, ...) tensor is ``(r // L, r % L)``; the two leading strides of every tensor are passed,
so ``z`` can be a strided view (every other half-row of the input projection) without a copy. The channel
stride must be 1. Offsets are computed in int64: ys has N * L * K * d elements, past 2**31 at large batches.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _row_offsets(rows, L, stride_n, stride_l):
    """Element offset of the start of each row of an (N, L, ...) tensor with the given leading strides."""
    r = rows.to(tl.int64)
    return (r // L) * stride_n + (r % L) * stride_l


@triton.jit
def _direction_sum(ys_ptr, ys_row, s_yk, cols, mask, K: tl.constexpr, ACC: tl.constexpr):
    """``sum_k ys[row, k, cols]`` in ACC, zero outside ``mask``."""
    s = tl.load(ys_ptr + ys_row[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
    for k in tl.static_range(1, K):
        s += tl.load(ys_ptr + ys_row[:, None] + k * s_yk + cols[None, :], mask=mask, other=0.0).to(ACC)
    return s


@triton.jit
def _sigmoid(z):
    # written out rather than tl.sigmoid so that float64 (interpreter tests) takes the same path; exp(-z)
    # overflowing to inf for very negative z gives 0, the right limit
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def gated_norm_fwd_kernel(
        ys_ptr, z_ptr, w_ptr, b_ptr, out_ptr, mean_ptr, rstd_ptr, sum_ptr,
        n_rows, L, d, eps,
        s_yn, s_yl, s_yk, s_zn, s_zl, s_on, s_ol,
        K: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
        STORE_SUM: tl.constexpr):
    """``out`` (N, L, d) in its own dtype, ``mean`` and ``rstd`` (N * L,) in ACC, with ``STORE_SUM`` the direction
    sum (N * L, d) in ACC; one program per ``BLOCK_R`` rows."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    r_mask = rows < n_rows
    c_mask = cols < d
    mask = r_mask[:, None] & c_mask[None, :]
    s = _direction_sum(ys_ptr, _row_offsets(rows, L, s_yn, s_yl), s_yk, cols, mask, K, ACC)
    mean = tl.sum(s, 1) / d
    xc = tl.where(mask, s - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / d + eps)
    w = tl.load(w_ptr + cols, mask=c_mask, other=0.0).to(ACC)
    b = tl.load(b_ptr + cols, mask=c_mask, other=0.0).to(ACC)
    yn = xc * rstd[:, None] * w[None, :] + b[None, :]
    z_off = _row_offsets(rows, L, s_zn, s_zl)[:, None] + cols[None, :]
    z = tl.load(z_ptr + z_off, mask=mask, other=0.0).to(ACC)
    out = yn * z * _sigmoid(z)
    o_off = _row_offsets(rows, L, s_on, s_ol)[:, None] + cols[None, :]
    tl.store(out_ptr + o_off, out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=r_mask)
    tl.store(rstd_ptr + rows, rstd, mask=r_mask)
    if STORE_SUM:
        tl.store(sum_ptr + rows.to(tl.int64)[:, None] * d + cols[None, :], s, mask=mask)


@triton.jit
def gated_norm_bwd_kernel(
        dout_ptr, sum_ptr, z_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, ds_ptr, dz_ptr, dw_ptr, db_ptr,
        n_rows, L, d, blocks_per_program,
        s_gn, s_gl, s_zn, s_zl,
        ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr):
    """``ds`` (N * L, d) in its dtype (the gradient of every ``ys[k]``), ``dz`` (N * L, d) contiguous, and this
    program's partial sums of ``dw`` and ``db`` (rows ``program_id`` of two (programs, d) ACC buffers, the
    ``db`` one right after the ``dw`` one).
    ``dout`` has leading strides ``s_g*``; the forward's direction sum ``s`` is contiguous (N * L, d) in ACC."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    c_mask = cols < d
    w = tl.load(w_ptr + cols, mask=c_mask, other=0.0).to(ACC)
    b = tl.load(b_ptr + cols, mask=c_mask, other=0.0).to(ACC)
    # whole tiles accumulate; the rows are reduced once at the end (cheaper than a reduction per block)
    dw_acc = tl.zeros((BLOCK_R, BLOCK_D), ACC)
    db_acc = tl.zeros((BLOCK_R, BLOCK_D), ACC)
    for i in tl.range(0, blocks_per_program, num_stages=STAGES):    # STAGES > 1: prefetch the next block
        rows = (pid * blocks_per_program + i) * BLOCK_R + tl.arange(0, BLOCK_R)
        r_mask = rows < n_rows
        mask = r_mask[:, None] & c_mask[None, :]
        flat = rows.to(tl.int64)[:, None] * d + cols[None, :]            # s, ds and dz are contiguous
        s = tl.load(sum_ptr + flat, mask=mask, other=0.0)
        mean = tl.load(mean_ptr + rows, mask=r_mask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=r_mask, other=0.0)
        xhat = tl.where(mask, (s - mean[:, None]) * rstd[:, None], 0.0)
        z = tl.load(z_ptr + _row_offsets(rows, L, s_zn, s_zl)[:, None] + cols[None, :],
                    mask=mask, other=0.0).to(ACC)
        dout = tl.load(dout_ptr + _row_offsets(rows, L, s_gn, s_gl)[:, None] + cols[None, :],
                       mask=mask, other=0.0).to(ACC)
        sig = _sigmoid(z)
        yn = xhat * w[None, :] + b[None, :]
        dyn = dout * z * sig                                          # zero outside the mask (dout is)
        dw_acc += dyn * xhat
        db_acc += dyn
        dxhat = dyn * w[None, :]
        c1 = tl.sum(dxhat, 1) / d
        c2 = tl.sum(dxhat * xhat, 1) / d
        ds = (dxhat - c1[:, None] - xhat * c2[:, None]) * rstd[:, None]
        dz = dout * yn * sig * (1.0 + z * (1.0 - sig))
        tl.store(ds_ptr + flat, ds.to(ds_ptr.dtype.element_ty), mask=mask)
        tl.store(dz_ptr + flat, dz.to(dz_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + pid * d + cols, tl.sum(dw_acc, 0), mask=c_mask)
    tl.store(db_ptr + pid * d + cols, tl.sum(db_acc, 0), mask=c_mask)


@triton.jit
def partial_sums_kernel(part_ptr, dw_ptr, db_ptr, P, d, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
                        STAGES: tl.constexpr):
    """``dw = sum_p part[0, p]``, ``db = sum_p part[1, p]`` for the backward's contiguous (2, P, d) partials, in
    a fixed order (deterministic), cast to each output's dtype; grid (column blocks, 2), one launch for both.
    Narrow column blocks (one 128-byte segment per row) and tall row tiles give enough programs and bytes in
    flight for a reduction this small to cost a few microseconds."""
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    j = tl.program_id(1)
    acc = tl.zeros((BLOCK_P, BLOCK_D), part_ptr.dtype.element_ty)
    for p0 in tl.range(0, P, BLOCK_P, num_stages=STAGES):
        ps = p0 + tl.arange(0, BLOCK_P)
        mask = (ps < P)[:, None] & (cols < d)[None, :]
        acc += tl.load(part_ptr + (j * P + ps[:, None]).to(tl.int64) * d + cols[None, :], mask=mask, other=0.0)
    total = tl.sum(acc, 0)
    if j == 0:
        tl.store(dw_ptr + cols, total.to(dw_ptr.dtype.element_ty), mask=cols < d)
    else:
        tl.store(db_ptr + cols, total.to(db_ptr.dtype.element_ty), mask=cols < d)
