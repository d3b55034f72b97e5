"""Triton kernels of shifted-window attention with a relative position bias, read from and written to the map.

Notation as in ``lamamba.ops.window_attention``: an H x W map (the window divides both sides), windows of
``wh x ww`` tokens (N = wh * ww) after a cyclic roll of the map by ``(-sh, -sw)``, heads of size ``hd``,
``logits = q k^T * scale + table[rel(i, j), head]``, logits between tokens of different shifted regions removed.

**No layout changes.** The query/key/value projection is a per-token linear map, so it commutes with the roll
and the window partition: the kernels take ``qkv`` as the projection of the map itself, (batch, H, W, 3C) with
channels ``[q | k | v]`` each ``[head][hd]``, and gather a window's tokens from it: token ``i`` of window
``(wr, wc)`` is rolled-frame pixel ``(wr*wh + i // ww, wc*ww + i % ww)``, which is map pixel
``((wr*wh + i // ww + sh) % H, (wc*ww + i % ww + sw) % W)``. The output is written to the same pixels, (batch,
H, W, C), which is the reverse roll and partition; the output projection follows on the map. The roll, the
partition, the head split and their inverses (eight copies per attention layer in the forward and backward of
the PyTorch route) are index arithmetic here.

**No bias or mask tensors.** The bias index of tokens ``i, j`` is Swin's
``(ri - rj + window - 1) * (2 window - 1) + (ci - cj + window - 1)`` (``ri``, ``ci``: row and column within
the window); the region of a rolled-frame row ``r`` is ``(r >= H - wh) + (r >= H - sh)`` when the rows are
shifted (Swin's three bands), likewise for columns; tokens attend to tokens of their own region only.

**Work split.** One program owns one window and one head and loops over a block of ``per_program`` samples:
the bias tile is gathered once and, in the backward, the logits' gradient is summed over the samples in
registers, so the table's gradient is one (N, N) partial per program (no atomics: deterministic), which the
host reduces. A window's N tokens are one tile (N <= 64 at window 8), so the softmax needs no running maximum;
the forward keeps each row's log-sum-exp for the backward, which recomputes the probabilities (FlashAttention's
backward: ``dS = P * (dP - rowsum(P * dP))``).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _window_tokens(pid_win, H, W, wh, ww, sh, sw, N, BLOCK_N: tl.constexpr):
    """(map pixel of each token, row and column within the window, row and column region, token valid)."""
    wr = pid_win // (W // ww)
    wc = pid_win % (W // ww)
    i = tl.arange(0, BLOCK_N)
    valid = i < N
    ri = i // ww
    ci = i % ww
    rr = wr * wh + ri                                            # rolled-frame row and column
    cc = wc * ww + ci
    pix = ((rr + sh) % H) * W + (cc + sw) % W
    band_r = tl.where(sh > 0, (rr >= H - wh).to(tl.int32) + (rr >= H - sh).to(tl.int32), 0)
    band_c = tl.where(sw > 0, (cc >= W - ww).to(tl.int32) + (cc >= W - sw).to(tl.int32), 0)
    return tl.where(valid, pix, 0), ri, ci, band_r * 3 + band_c, valid


@triton.jit
def _bias_tile(table_ptr, head, heads, ri, ci, region, valid, window):
    """The logit bias of every token pair of the window, ``-inf`` where a pair may not attend (other regions,
    keys outside the window), so that ``exp`` of a logit is 0 there; query rows outside the window stay finite."""
    idx = (ri[:, None] - ri[None, :] + window - 1) * (2 * window - 1) + (ci[:, None] - ci[None, :] + window - 1)
    pair = valid[:, None] & valid[None, :]
    bias = tl.load(table_ptr + idx * heads + head, mask=pair, other=0.0).to(tl.float32)
    allowed = (region[:, None] == region[None, :]) & valid[None, :]
    return tl.where(allowed | ~valid[:, None], bias, float("-inf"))


@triton.jit
def _program_tiles(pid, table_ptr, H, W, hd, heads, wh, ww, sh, sw, N, window, s_qp, s_op,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """What program ``pid`` (window * heads + head) keeps across its samples: (bias tile, token valid, token x
    channel mask, offsets of the head's q channels in ``qkv`` and of its channels in ``o``, within a sample)."""
    head = pid % heads
    pix, ri, ci, region, valid = _window_tokens(pid // heads, H, W, wh, ww, sh, sw, N, BLOCK_N)
    bias = _bias_tile(table_ptr, head, heads, ri, ci, region, valid, window)
    d = tl.arange(0, BLOCK_D)
    td = valid[:, None] & (d[None, :] < hd)
    return (bias, valid, td, pix[:, None] * s_qp + head * hd + d[None, :],
            pix[:, None] * s_op + head * hd + d[None, :])


@triton.jit
def _load_qkv(base, q_off, C, td):
    """One sample's q, k and v tiles of the program's window and head."""
    return (tl.load(base + q_off, mask=td, other=0.0), tl.load(base + C + q_off, mask=td, other=0.0),
            tl.load(base + 2 * C + q_off, mask=td, other=0.0))


@triton.jit
def window_attn_fwd_kernel(
        qkv_ptr, table_ptr, o_ptr, lse_ptr,
        B, H, W, C, hd, heads, wh, ww, sh, sw, N, window, per_program, scale,
        s_qb, s_qp, s_ob, s_op,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """``o`` (batch, H, W, C) and the rows' log-sum-exp ``lse`` (batch, windows * heads, N), float32."""
    pid = tl.program_id(0)                       # window * heads + head
    bias, valid, td, q_off, o_off = _program_tiles(pid, table_ptr, H, W, hd, heads, wh, ww, sh, sw, N, window,
                                                   s_qp, s_op, BLOCK_N, BLOCK_D)
    n_win_heads = tl.num_programs(0)
    b0 = tl.program_id(1).to(tl.int64) * per_program
    for i in range(0, tl.minimum(per_program, B - b0)):
        b = b0 + i
        q, k, v = _load_qkv(qkv_ptr + b * s_qb, q_off, C, td)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale + bias
        m = tl.max(s, 1)
        p = tl.exp(s - m[:, None])
        l = tl.sum(p, 1)
        o = tl.dot(p.to(v.dtype), v, input_precision=PRECISION) / l[:, None]
        tl.store(o_ptr + b * s_ob + o_off, o.to(o_ptr.dtype.element_ty), mask=td)
        tl.store(lse_ptr + (b * n_win_heads + pid) * N + tl.arange(0, BLOCK_N), m + tl.log(l),
                 mask=valid)


@triton.jit
def window_attn_bwd_kernel(
        do_ptr, qkv_ptr, table_ptr, lse_ptr, dqkv_ptr, dbias_ptr,
        B, H, W, C, hd, heads, wh, ww, sh, sw, N, window, per_program, scale,
        s_qb, s_qp, s_ob, s_op,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """``dqkv`` (qkv's layout) and this program's sum over its samples of the logits' gradient, ``dbias``
    (sample blocks, windows * heads, N, N), float32."""
    pid = tl.program_id(0)
    bias, valid, td, q_off, o_off = _program_tiles(pid, table_ptr, H, W, hd, heads, wh, ww, sh, sw, N, window,
                                                   s_qp, s_op, BLOCK_N, BLOCK_D)
    n_win_heads = tl.num_programs(0)
    ds_sum = tl.zeros([BLOCK_N, BLOCK_N], tl.float32)
    b0 = tl.program_id(1).to(tl.int64) * per_program
    for i in range(0, tl.minimum(per_program, B - b0)):
        b = b0 + i
        q, k, v = _load_qkv(qkv_ptr + b * s_qb, q_off, C, td)
        do = tl.load(do_ptr + b * s_ob + o_off, mask=td, other=0.0)
        lse = tl.load(lse_ptr + (b * n_win_heads + pid) * N + tl.arange(0, BLOCK_N), mask=valid,
                      other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale + bias
        p = tl.exp(s - lse[:, None])                            # 0 where the bias is -inf
        dv = tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - tl.sum(p * dp, 1)[:, None])
        ds_sum += ds
        dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION) * scale
        dk = tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION) * scale
        dbase = dqkv_ptr + b * s_qb
        tl.store(dbase + q_off, dq.to(dqkv_ptr.dtype.element_ty), mask=td)
        tl.store(dbase + C + q_off, dk.to(dqkv_ptr.dtype.element_ty), mask=td)
        tl.store(dbase + 2 * C + q_off, dv.to(dqkv_ptr.dtype.element_ty), mask=td)
    n = tl.arange(0, BLOCK_N)
    part = dbias_ptr + (tl.program_id(1).to(tl.int64) * n_win_heads + pid) * N * N
    tl.store(part + n[:, None] * N + n[None, :], ds_sum, mask=valid[:, None] & valid[None, :])
