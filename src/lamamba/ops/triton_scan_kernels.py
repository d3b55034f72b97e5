"""Triton kernels of the Mamba-layout selective scan (``selective_scan``; SS2D has its own, ``triton_ss2d_kernels``).

The recurrence ``h_t = a_t * h_{t-1} + b_t`` with ``a_t = exp(delta_t * A)`` and ``b_t = delta_t * B_t * u_t``
(module doc of ``lamamba.ops.selective_scan``) is solved chunk by chunk: a program owns one batch element
and a block of ``BLOCK_D`` channels, walks the time axis in tiles of ``BLOCK_T`` steps, and inside a tile
solves the recurrence for the whole ``[BLOCK_T, BLOCK_D, BLOCK_N]`` block with one parallel prefix scan
(``tl.associative_scan``) over the composition of affine maps ``h -> a h + b`` (Blelloch 1990; the
operator is associative, so the scan is exact up to rounding). The state entering the tile is carried in
registers from the previous tile; inputs are loaded as whole tiles (coalesced along the contiguous axis:
time). ``STAGES > 1`` asks Triton to software-pipeline the tile loads of the time loop.

Tensors come in three families, addressed through strides:

* "x-like" (signal ``u``/``x``, gate ``z``, output, their gradients), addressed
  ``b * sx_b + k * sx_k + channel * sx_c + position * sx_l``;
* "delta-like" (raw time steps and their gradient), ``sd_*`` strides;
* "B-like" (``B``, ``C`` and their fp32 gradient buffers), ``b * sB_b + k * sB_k + n * sB_n + position * sB_l``.

``k`` indexes a *group*: a set of ``d`` channels sharing ``B``/``C``; parameters ``A, D, delta_bias`` are
indexed ``k * d + channel``. One program per (batch, group, channel block).

The backward walks the tiles in reverse. The state entering each tile comes from a checkpoint
(``ckpt``: the state at every tile start, written by the forward kernel with ``STORE_CKPT``); the tile's
states are recomputed with the forward scan, and the adjoint ``g_t = dL/dh_t`` solves the reverse recurrence
``g_t = C_t dy_t + a_{t+1} g_{t+1}`` with the same forward scan on tiles loaded in reverse time order
(then flipped back), because ``associative_scan(reverse=True)`` mis-orders non-commutative operators on
some Triton versions (triton-lang/triton#4362). With ``a_t h_{t-1} = h_t - b_t`` no shifted state is needed:

    d delta_t = sum_n g_t (A (h_t - b_t) + B_t u_t)        d u_t = delta_t sum_n g_t B_t + D dy_t
    d B_t     = sum_channels g_t delta_t u_t                d C_t = sum_channels dy_t h_t
    d A       = sum_t g_t (h_t - b_t) delta_t               d D   = sum_t dy_t u_t

Sums over time are kept in registers and written once per (batch, channel block) (the host sums over
the batch); sums over channels are reduced inside the block, then added to fp32 buffers with atomics
when several channel blocks share a direction.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _compose(a_first, b_first, a_next, b_next):
    """Composition of ``h -> a_first h + b_first`` followed by ``h -> a_next h + b_next``."""
    return a_first * a_next, a_next * b_first + b_next


@triton.jit
def _softplus(v):
    """Mamba's softplus: ``log(1 + exp(v))`` up to 20, the identity above."""
    return tl.where(v <= 20.0, tl.log(1.0 + tl.exp(v)), v)


@triton.jit
def _time_step(dt_raw, bias, mask, SOFTPLUS: tl.constexpr):
    """``delta = softplus(dt_raw + bias)`` (or without softplus), zero outside ``mask``: a no-op step."""
    v = dt_raw + bias[None, :]
    if SOFTPLUS:
        v = _softplus(v)
    return tl.where(mask, v, 0.0)


@triton.jit
def _tile_states(dt, x, Bt, A, h_prev):
    """States ``h_t`` ``[T, D, N]`` of one tile from the state ``h_prev`` ``[D, N]`` entering it; also ``b_t``."""
    a = tl.exp(dt[:, :, None] * A[None, :, :])
    b = (dt * x)[:, :, None] * Bt[:, None, :]
    a_cum, b_cum = tl.associative_scan((a, b), 0, _compose)
    return a_cum * h_prev[None, :, :] + b_cum, b


@triton.jit
def _last_row(t3, rows, BLOCK_T: tl.constexpr):
    """Row ``BLOCK_T - 1`` of a ``[T, D, N]`` tile."""
    return tl.sum(tl.where(rows[:, None, None] == BLOCK_T - 1, t3, 0.0), 0)


@triton.jit
def scan_fwd_kernel(
        x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr,
        out_ptr, last_ptr, ckpt_ptr,
        L, d, N, K, n_blocks, n_chunks,
        sx_b, sx_k, sx_c, sx_l, sd_b, sd_k, sd_c, sd_l, sB_b, sB_k, sB_n, sB_l,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
        HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr, WRITE_OUT: tl.constexpr, STORE_LAST: tl.constexpr,
        STORE_CKPT: tl.constexpr, ACC: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr):
    """Forward scan. Grid: (batch, K * n_blocks). Writes out, and optionally the final state (batch, K, d, N)
    and the tile-start states (batch, K, n_chunks, d, N)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    k = pid // n_blocks
    ch = (pid % n_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    c_mask = ch < d
    ns = tl.arange(0, BLOCK_N)
    dn_mask = c_mask[:, None] & (ns < N)[None, :]
    rows = tl.arange(0, BLOCK_T)
    par = k * d + ch                                               # parameter index (K*d,)
    A = tl.load(A_ptr + par[:, None] * N + ns[None, :], mask=dn_mask, other=0.0).to(ACC)
    bias = tl.zeros([BLOCK_D], ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + par, mask=c_mask, other=0.0).to(ACC)
    Dv = tl.zeros([BLOCK_D], ACC)
    if HAS_D:
        Dv = tl.load(D_ptr + par, mask=c_mask, other=0.0).to(ACC)
    x_base = x_ptr + pid_b * sx_b + k * sx_k + ch[None, :] * sx_c
    dt_base = dt_ptr + pid_b * sd_b + k * sd_k + ch[None, :] * sd_c
    B_off = pid_b * sB_b + k * sB_k + ns[None, :] * sB_n
    ckpt_base = ckpt_ptr + (pid_b * K + k) * n_chunks * d * N + ch[:, None] * N + ns[None, :]
    h = tl.zeros([BLOCK_D, BLOCK_N], ACC)
    for c in tl.range(0, n_chunks, num_stages=STAGES):
        if STORE_CKPT:
            tl.store(ckpt_base + c * d * N, h, mask=dn_mask)
        t = c * BLOCK_T + rows
        t_mask = t < L
        pos = t.to(tl.int64)
        m2 = t_mask[:, None] & c_mask[None, :]
        mn = t_mask[:, None] & (ns < N)[None, :]
        x = tl.load(x_base + pos[:, None] * sx_l, mask=m2, other=0.0).to(ACC)
        dt_raw = tl.load(dt_base + pos[:, None] * sd_l, mask=m2, other=0.0).to(ACC)
        dt = _time_step(dt_raw, bias, m2, SOFTPLUS)
        Bt = tl.load(B_ptr + B_off + pos[:, None] * sB_l, mask=mn, other=0.0).to(ACC)
        hs, _ = _tile_states(dt, x, Bt, A, h)
        h = _last_row(hs, rows, BLOCK_T)
        if WRITE_OUT:
            Ct = tl.load(C_ptr + B_off + pos[:, None] * sB_l, mask=mn, other=0.0).to(ACC)
            y = tl.sum(hs * Ct[:, None, :], 2) + Dv[None, :] * x     # [T, D]
            o_ptrs = out_ptr + pid_b * sx_b + k * sx_k + ch[None, :] * sx_c + pos[:, None] * sx_l
            if HAS_Z:
                z = tl.load(z_ptr + pid_b * sx_b + k * sx_k + ch[None, :] * sx_c + pos[:, None] * sx_l,
                            mask=m2, other=0.0).to(ACC)
                y = y * z * tl.sigmoid(z)
            tl.store(o_ptrs, y, mask=m2)
    if STORE_LAST:
        tl.store(last_ptr + (pid_b * K + k) * d * N + ch[:, None] * N + ns[None, :], h, mask=dn_mask)


@triton.jit
def scan_bwd_kernel(
        dout_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, ckpt_ptr,
        dx_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
        L, d, N, K, n_blocks, n_chunks,
        sx_b, sx_k, sx_c, sx_l, sd_b, sd_k, sd_c, sd_l, sB_b, sB_k, sB_n, sB_l,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
        HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr, ATOMIC_BC: tl.constexpr, ACC: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr):
    """Backward scan (same grid as the forward). Writes dx, ddelta
    and dz in place, adds dB, dC into fp32 buffers (atomically when several channel blocks share a
    direction), and writes per-batch partial sums of dA (batch, K*d, N), dD and ddelta_bias (batch, K*d)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    k = pid // n_blocks
    ch = (pid % n_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    c_mask = ch < d
    ns = tl.arange(0, BLOCK_N)
    dn_mask = c_mask[:, None] & (ns < N)[None, :]
    rows = tl.arange(0, BLOCK_T)
    par = k * d + ch
    A = tl.load(A_ptr + par[:, None] * N + ns[None, :], mask=dn_mask, other=0.0).to(ACC)
    bias = tl.zeros([BLOCK_D], ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + par, mask=c_mask, other=0.0).to(ACC)
    Dv = tl.zeros([BLOCK_D], ACC)
    if HAS_D:
        Dv = tl.load(D_ptr + par, mask=c_mask, other=0.0).to(ACC)
    x_off = pid_b * sx_b + k * sx_k + ch[None, :] * sx_c
    dt_off = pid_b * sd_b + k * sd_k + ch[None, :] * sd_c
    B_off = pid_b * sB_b + k * sB_k + ns[None, :] * sB_n
    ckpt_base = ckpt_ptr + (pid_b * K + k) * n_chunks * d * N + ch[:, None] * N + ns[None, :]
    g = tl.zeros([BLOCK_D, BLOCK_N], ACC)          # adjoint of the state entering the later tile
    dA = tl.zeros([BLOCK_D, BLOCK_N], ACC)
    dD = tl.zeros([BLOCK_D], ACC)
    dbias = tl.zeros([BLOCK_D], ACC)
    for i in tl.range(0, n_chunks, num_stages=STAGES):
        c = n_chunks - 1 - i
        # -- the tile in time order: recompute its states from the checkpoint ------------------
        t = c * BLOCK_T + rows
        t_mask = t < L
        pos = t.to(tl.int64)
        m2 = t_mask[:, None] & c_mask[None, :]
        mn = t_mask[:, None] & (ns < N)[None, :]
        x = tl.load(x_ptr + x_off + pos[:, None] * sx_l, mask=m2, other=0.0).to(ACC)
        dt_raw = tl.load(dt_ptr + dt_off + pos[:, None] * sd_l, mask=m2, other=0.0).to(ACC)
        dt = _time_step(dt_raw, bias, m2, SOFTPLUS)
        Bt = tl.load(B_ptr + B_off + pos[:, None] * sB_l, mask=mn, other=0.0).to(ACC)
        Ct = tl.load(C_ptr + B_off + pos[:, None] * sB_l, mask=mn, other=0.0).to(ACC)
        h0 = tl.load(ckpt_base + c * d * N, mask=dn_mask, other=0.0)
        hs, b = _tile_states(dt, x, Bt, A, h0)
        dy = tl.load(dout_ptr + x_off + pos[:, None] * sx_l, mask=m2, other=0.0).to(ACC)
        if HAS_Z:
            z = tl.load(z_ptr + x_off + pos[:, None] * sx_l, mask=m2, other=0.0).to(ACC)
            sz = tl.sigmoid(z)
            y = tl.sum(hs * Ct[:, None, :], 2) + Dv[None, :] * x
            dz = dy * y * sz * (1.0 + z * (1.0 - sz))
            tl.store(dz_ptr + x_off + pos[:, None] * sx_l, dz, mask=m2)
            dy = dy * z * sz
        # -- the tile in reverse time order: g_t = C_t dy_t + a_{t+1} g_{t+1} ----------------------
        tr = c * BLOCK_T + (BLOCK_T - 1) - rows
        tr_mask = tr < L
        nx_mask = (tr + 1) < L
        pos_r = tr.to(tl.int64)
        pos_n = (tr + 1).to(tl.int64)
        m2r = tr_mask[:, None] & c_mask[None, :]
        m2n = nx_mask[:, None] & c_mask[None, :]
        dt_n = _time_step(tl.load(dt_ptr + dt_off + pos_n[:, None] * sd_l, mask=m2n, other=0.0).to(ACC),
                          bias, m2n, SOFTPLUS)
        Ct_r = tl.load(C_ptr + B_off + pos_r[:, None] * sB_l, mask=tr_mask[:, None] & (ns < N)[None, :],
                       other=0.0).to(ACC)
        dy_r = tl.load(dout_ptr + x_off + pos_r[:, None] * sx_l, mask=m2r, other=0.0).to(ACC)
        if HAS_Z:
            z_r = tl.load(z_ptr + x_off + pos_r[:, None] * sx_l, mask=m2r, other=0.0).to(ACC)
            dy_r = dy_r * z_r * tl.sigmoid(z_r)
        a_n = tl.exp(dt_n[:, :, None] * A[None, :, :])
        a_cum, g_cum = tl.associative_scan((a_n, dy_r[:, :, None] * Ct_r[:, None, :]), 0, _compose)
        gs_r = g_cum + a_cum * g[None, :, :]
        g = _last_row(gs_r, rows, BLOCK_T)                 # adjoint at the tile's first step
        gs = tl.flip(gs_r, 0)                              # back to time order
        # -- gradients: a_t h_{t-1} = h_t - b_t, d a_t / d delta_t = A a_t, d b_t / d delta_t = B_t u_t --
        ah = hs - b
        ddt = tl.sum(gs * (ah * A[None, :, :] + x[:, :, None] * Bt[:, None, :]), 2)
        dx = tl.sum(gs * Bt[:, None, :], 2) * dt + Dv[None, :] * dy
        dA += tl.sum(gs * ah * dt[:, :, None], 0)
        dD += tl.sum(dy * x, 0)
        if SOFTPLUS:
            v = dt_raw + bias[None, :]
            ddt = tl.where(v <= 20.0, ddt * tl.sigmoid(v), ddt)
        ddt = tl.where(m2, ddt, 0.0)
        dbias += tl.sum(ddt, 0)
        tl.store(ddt_ptr + dt_off + pos[:, None] * sd_l, ddt, mask=m2)
        dx_ptrs = dx_ptr + x_off + pos[:, None] * sx_l
        tl.store(dx_ptrs, dx, mask=m2)
        dB = tl.sum(gs * (dt * x)[:, :, None], 1)          # [T, N]: reduce over the block's channels
        dC = tl.sum(hs * dy[:, :, None], 1)
        B_ptrs = B_off + pos[:, None] * sB_l
        if ATOMIC_BC:
            tl.atomic_add(dB_ptr + B_ptrs, dB, mask=mn, sem="relaxed")
            tl.atomic_add(dC_ptr + B_ptrs, dC, mask=mn, sem="relaxed")
        else:
            tl.store(dB_ptr + B_ptrs, dB, mask=mn)
            tl.store(dC_ptr + B_ptrs, dC, mask=mn)
    part = pid_b * K * d + par
    tl.store(dA_ptr + part[:, None] * N + ns[None, :], dA, mask=dn_mask)
    tl.store(dD_ptr + part, dD, mask=c_mask)
    tl.store(dbias_ptr + part, dbias, mask=c_mask)
