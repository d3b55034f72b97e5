"""Triton kernels of SS2D's four-direction selective scan, parallel over directions, channels and length.

Recurrence and notation as in ``lamamba.ops.selective_scan``: ``h_t = a_t h_{t-1} + b_t`` with
``a_t = exp(delta_t A)``, ``b_t = delta_t B_t x_t``, ``y_t = C_t . h_t + D x_t``, per channel and state index.

**Work split.** One program owns one direction ``k``, one *chunk* of consecutive scan steps, one block of
``BLOCK_D`` channels and one batch element (grid axis 0 = ``k + 4 * (channel block + blocks * chunk)``, the
direction varying fastest so that the four programs reading the same pixels run side by side and share them
in L2). A program walks its chunk in tiles of ``BLOCK_T`` steps and solves each tile with one parallel
prefix scan (``tl.associative_scan``) over the composition of affine maps ``h -> a h + b``, carrying the state
between tiles in registers. When batch x directions x channel blocks cannot fill the GPU (large images, small
batches), the length is split into chunks that run in parallel: a first launch (``STATE_ONLY``) reduces each
chunk to its map ``h -> P h + E`` (decay product, end state from zero), and the main launch starts every chunk
from the composition of the maps of the chunks before it (a few small loads).

**Paths without tables.** Step ``s`` of direction ``k`` visits pixel ``_pixel(s, k, H, W)``, computed from the
definition of the four spatially continuous paths (``lamamba.ops.scan_paths``): a row snake, its reverse, a
column snake from the bottom-left corner, its reverse. Inputs are channels-last in pixel order, so a tile is
``BLOCK_T`` rows of ``BLOCK_D`` contiguous channels, and each direction writes its own output slice
``y[b, pixel, k, channels]``: the cross-scan and cross-merge are the kernel's own loads and stores, nothing
is permuted in memory and no two programs write the same element.

**Backward without flips.** The forward stores the state entering every tile (``STORE_CKPT``). The backward
walks its chunk's tiles from last to first, recomputes each tile's states from that checkpoint with the forward
scan, and solves the adjoint ``g_t = C_t dy_t + a_{t+1} g_{t+1}`` with a *reverse* associative scan on the
same tile: the decays ``a_{t+1}`` come from a second load of the time steps one step ahead (an L1 hit), so
every quantity stays in time order. ``associative_scan(reverse=True)`` combines ``f(later, earlier)``, which
is exactly the composition of the reverse recurrence (checked against a loop in the tests, interpreted and
compiled). The adjoint entering a chunk from the right is composed from per-chunk maps like the forward
states. With ``a_t h_{t-1} = h_t - b_t`` no shifted state is needed:

    d delta_t = sum_n g_t (A (h_t - b_t) + B_t x_t)       d x_t = delta_t sum_n g_t B_t + D dy_t
    d B_t     = sum_channels g_t delta_t x_t               d C_t = sum_channels dy_t h_t
    d A       = sum_t g_t (h_t - b_t) delta_t              d D   = sum_t dy_t x_t

Sums over time are reduced over each tile's rows as the tile is done (running (BLOCK_T, BLOCK_D) sums would hold
48 more registers per thread, at one warp per program) and written once per program; sums over channels are
reduced in the block and written per channel block (no atomics, so results are deterministic); the host adds the
partials.

**Instructions per step** (the kernels issue instructions at 1/8 occupancy, 255 registers in the backward: fewer
instructions is what makes them faster; docs/PERFORMANCE.md, session 9). When every tile is full (``EVEN``) loads
and stores carry no masks, the last chunk's loop stops at the last tile, and a step past the end reads the last
step again (any finite decay: the adjoint after the last step is zero). Offsets within a sample are 32-bit (the
sample's base is a 64-bit scalar), the path's divisions are float arithmetic (``_div``), and with ``FAST`` (fp32 on
a GPU) ``exp`` and ``log`` are the hardware's approximate ones. Tried and slower on the H200: one channel per lane
with each thread holding a tile's time steps (no layout conversions, 42% fewer instructions, but 2-byte loads:
1.5-2.7x the time).
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _compose(a_first, b_first, a_next, b_next):
    """Composition of ``h -> a_first h + b_first`` followed by ``h -> a_next h + b_next``."""
    return a_first * a_next, a_next * b_first + b_next


@triton.jit
def _exp(x, FAST: tl.constexpr):
    """``exp``; with ``FAST`` (fp32 on a GPU) the hardware's approximate one (denormals flushed)."""
    if FAST:
        return libdevice.fast_expf(x)
    else:
        return tl.exp(x)


@triton.jit
def _softplus(v, FAST: tl.constexpr):
    """Mamba's ``softplus`` (the identity above 20) and ``e = exp(min(v, 20))``, from which its derivative
    ``sigmoid(v) = e / (1 + e)`` follows. With ``FAST``, ``log(1 + e)`` is the hardware's approximate log (absolute
    error ~2^-22) above ``e = 0.1`` and its series below (relative error < 2e-6), not a ~20-instruction precise log."""
    e = _exp(tl.minimum(v, 20.0), FAST)
    if FAST:
        series = e * (1.0 - e * (0.5 - e * (0.3333333333333333 - e * (0.25 - e * 0.2))))
        log1p_e = tl.where(e < 0.1, series, libdevice.fast_logf(1.0 + e))
    else:
        log1p_e = tl.log(1.0 + e)
    return tl.where(v <= 20.0, log1p_e, v), e


@triton.jit
def _time_step(dt_raw, bias, mask, EVEN: tl.constexpr, FAST: tl.constexpr):
    """``delta = softplus(dt_raw + bias)``, zero outside ``mask`` (no mask when every tile is full)."""
    dt, _ = _softplus(dt_raw + bias[None, :], FAST)
    return dt if EVEN else tl.where(mask, dt, 0.0)


@triton.jit
def _load(ptr, mask, EVEN: tl.constexpr):
    """A tile load, unmasked when every tile is full (``EVEN``)."""
    if EVEN:
        return tl.load(ptr)
    else:
        return tl.load(ptr, mask=mask, other=0.0)


@triton.jit
def _store(ptr, value, mask, EVEN: tl.constexpr):
    if EVEN:
        tl.store(ptr, value)
    else:
        tl.store(ptr, value, mask=mask)


@triton.jit
def _div(s, n):
    """``s // n`` for ``0 <= s < 2**21`` and ``n >= 1``, in float arithmetic (a few instructions, not an integer
    division's ~20): ``(s + 0.5) / n`` stays at least ``0.5 / n`` from an integer, more than the division's error of
    at most ``(s + 0.5) / n * 2**-22`` (div.full.f32, 2 ulp) while ``s < 2**21``."""
    return ((s.to(tl.float32) + 0.5) / n).to(tl.int32)                 # n may be a constant 1 (specialised)


@triton.jit
def _pixel(s, k, H, W):
    """Row-major pixel visited at step ``s`` (in [0, H*W), H*W < 2**21) of path ``k`` (``lamamba.ops.scan_paths``)."""
    s = tl.where(k % 2 == 1, H * W - 1 - s, s)           # paths 1 and 3 are paths 0 and 2 reversed
    if k < 2:                                            # row snake: odd rows right to left
        r = _div(s, W)
        c = s - r * W
        c = tl.where(r % 2 == 1, W - 1 - c, c)
    else:                                                # column snake: even columns bottom to top
        c = _div(s, H)
        i = s - c * H
        r = tl.where(c % 2 == 0, H - 1 - i, i)
    return r * W + c


@triton.jit
def _row(t3, rows, which):
    """Row ``which`` of a ``[T, D, N]`` tile."""
    return tl.sum(tl.where(rows[:, None, None] == which, t3, 0.0), 0)


@triton.jit
def ss2d_fwd_kernel(
        x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, ckpt_ptr, carry_ptr,
        H, W, d, N, n_dblocks, chunk_tiles, n_chunks, n_tiles,
        sx_b, sx_l, sd_b, sd_l, sd_k, sB_b, sB_l, sB_k, sB_n, sy_b, sy_l, sy_k,
        STATE_ONLY: tl.constexpr, STORE_CKPT: tl.constexpr, EVEN: tl.constexpr, FAST: tl.constexpr,
        ACC: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr):
    """Forward. ``STATE_ONLY``: write each chunk's map (decay product, end state) to ``carry`` (2, batch, 4,
    n_chunks, d, N) and nothing else. Otherwise: write ``y`` (batch, L, 4, d) and, with ``STORE_CKPT``, the
    state entering every tile to ``ckpt`` (batch, 4, n_tiles, d, N)."""
    pid = tl.program_id(0)
    k = pid % 4
    chunk = pid // 4 // n_dblocks
    ch = (pid // 4 % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = tl.program_id(1).to(tl.int64)
    L = H * W
    c_mask = ch < d
    ns = tl.arange(0, BLOCK_N)
    n_mask = ns < N
    dn_mask = c_mask[:, None] & n_mask[None, :]
    rows = tl.arange(0, BLOCK_T)
    par = k * d + ch                                                     # parameter index in (4*d,)
    A = tl.load(A_ptr + par[:, None] * N + ns[None, :], mask=dn_mask, other=0.0).to(ACC)
    bias = tl.load(bias_ptr + par, mask=c_mask, other=0.0).to(ACC)
    Dv = tl.load(D_ptr + par, mask=c_mask, other=0.0).to(ACC)
    dn_off = ch[:, None] * N + ns[None, :]
    chunk_base = (b * 4 + k) * n_chunks * d * N + dn_off                 # (batch, 4, n_chunks, d, N)
    carry_half = tl.num_programs(1).to(tl.int64) * 4 * n_chunks * d * N
    h = tl.zeros([BLOCK_D, BLOCK_N], ACC)
    if not STATE_ONLY:
        for c in range(0, chunk):                                        # state entering this chunk
            P = tl.load(carry_ptr + chunk_base + c * d * N, mask=dn_mask, other=1.0)
            E = tl.load(carry_ptr + carry_half + chunk_base + c * d * N, mask=dn_mask, other=0.0)
            h = P * h + E
    P_acc = tl.full([BLOCK_D, BLOCK_N], 1.0, ACC)
    x_b = x_ptr + b * sx_b                       # 64-bit bases per batch element, 32-bit offsets within it
    dt_b = dt_ptr + b * sd_b + k.to(tl.int64) * sd_k  # delta may be direction-major: 64-bit direction offset
    B_b, C_b = B_ptr + b * sB_b + k * sB_k, C_ptr + b * sB_b + k * sB_k
    y_b = y_ptr + b * sy_b + k * sy_k
    cs, bn = ch[None, :], ns[None, :] * sB_n
    ckpt_base = ckpt_ptr + (b * 4 + k) * n_tiles * d * N + dn_off
    for i in tl.range(0, tl.minimum(chunk_tiles, n_tiles - chunk * chunk_tiles), num_stages=STAGES):
        tile = chunk * chunk_tiles + i                                   # the last chunk may be shorter
        if STORE_CKPT:
            tl.store(ckpt_base + tile * d * N, h, mask=dn_mask)
        s = tile * BLOCK_T + rows
        s_mask = s < L
        p = _pixel(tl.minimum(s, L - 1), k, H, W)
        m2 = s_mask[:, None] & c_mask[None, :]
        mn = s_mask[:, None] & n_mask[None, :]
        x = _load(x_b + (p[:, None] * sx_l + cs), m2, EVEN).to(ACC)
        dt = _time_step(_load(dt_b + (p[:, None] * sd_l + cs), m2, EVEN).to(ACC), bias, m2, EVEN, FAST)
        Bt = _load(B_b + (p[:, None] * sB_l + bn), mn, EVEN).to(ACC)
        a = _exp(dt[:, :, None] * A[None, :, :], FAST)
        a_cum, b_cum = tl.associative_scan((a, (dt * x)[:, :, None] * Bt[:, None, :]), 0, _compose)
        hs = a_cum * h[None, :, :] + b_cum
        h = _row(hs, rows, BLOCK_T - 1)
        if STATE_ONLY:
            P_acc = P_acc * _row(a_cum, rows, BLOCK_T - 1)
        else:
            Ct = _load(C_b + (p[:, None] * sB_l + bn), mn, EVEN).to(ACC)
            y = tl.sum(hs * Ct[:, None, :], 2) + Dv[None, :] * x
            _store(y_b + (p[:, None] * sy_l + cs), y.to(y_ptr.dtype.element_ty), m2, EVEN)
    if STATE_ONLY:
        tl.store(carry_ptr + chunk_base + chunk * d * N, P_acc, mask=dn_mask)
        tl.store(carry_ptr + carry_half + chunk_base + chunk * d * N, h, mask=dn_mask)


@triton.jit
def ss2d_bwd_kernel(
        dy_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, ckpt_ptr, carry_ptr,
        dx_ptr, ddt_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
        H, W, d, N, n_dblocks, chunk_tiles, n_chunks, n_tiles,
        sx_b, sx_l, sd_b, sd_l, sd_k, sB_b, sB_l, sB_k, sB_n, sy_b, sy_l, sy_k, sg_b, sg_l, sg_k,
        STATE_ONLY: tl.constexpr, EVEN: tl.constexpr, FAST: tl.constexpr, ACC: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr):
    """Backward (same grid as the forward). ``dy`` (batch, L, 4, d) with strides ``sy_*`` (a zero direction
    stride reads one gradient for all four). ``STATE_ONLY``: write each chunk's adjoint map (product of the
    decays, adjoint at the chunk's first step from zero) to ``carry``. Otherwise write ``dx`` (batch, L, 4, d),
    strides ``sg_*``), ``ddelta`` (delta's strides), the channel block's part of ``dB``/``dC`` (fp32, (channel
    blocks, batch, L, 4, N), summed by the host), and the program's partial sums of ``dA`` (batch * n_chunks, 4*d, N), ``dD`` and ``ddelta_bias``."""
    pid = tl.program_id(0)
    k = pid % 4
    chunk = pid // 4 // n_dblocks
    ch = (pid // 4 % n_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = tl.program_id(1).to(tl.int64)
    L = H * W
    c_mask = ch < d
    ns = tl.arange(0, BLOCK_N)
    n_mask = ns < N
    dn_mask = c_mask[:, None] & n_mask[None, :]
    rows = tl.arange(0, BLOCK_T)
    par = k * d + ch
    A = tl.load(A_ptr + par[:, None] * N + ns[None, :], mask=dn_mask, other=0.0).to(ACC)
    bias = tl.load(bias_ptr + par, mask=c_mask, other=0.0).to(ACC)
    Dv = tl.load(D_ptr + par, mask=c_mask, other=0.0).to(ACC)
    dn_off = ch[:, None] * N + ns[None, :]
    chunk_base = (b * 4 + k) * n_chunks * d * N + dn_off
    carry_half = tl.num_programs(1).to(tl.int64) * 4 * n_chunks * d * N
    g = tl.zeros([BLOCK_D, BLOCK_N], ACC)            # adjoint at the first step after the current tile
    if not STATE_ONLY:
        for j in range(0, n_chunks - 1 - chunk):                         # adjoint entering from the right
            c = n_chunks - 1 - j
            P = tl.load(carry_ptr + chunk_base + c * d * N, mask=dn_mask, other=1.0)
            G = tl.load(carry_ptr + carry_half + chunk_base + c * d * N, mask=dn_mask, other=0.0)
            g = P * g + G
    P_acc = tl.full([BLOCK_D, BLOCK_N], 1.0, ACC)
    dA = tl.zeros([BLOCK_D, BLOCK_N], ACC)            # sums over time, each tile's rows reduced as it is done
    dD = tl.zeros([BLOCK_D], ACC)
    dbias = tl.zeros([BLOCK_D], ACC)
    x_b = x_ptr + b * sx_b                       # 64-bit bases per batch element, 32-bit offsets within it
    dt_off = b * sd_b + k.to(tl.int64) * sd_k                           # delta may be direction-major
    dt_b, ddt_b = dt_ptr + dt_off, ddt_ptr + dt_off
    B_b, C_b = B_ptr + b * sB_b + k * sB_k, C_ptr + b * sB_b + k * sB_k
    dy_b = dy_ptr + b * sy_b + k * sy_k
    dx_b = dx_ptr + b * sg_b + k * sg_k
    dBC = ((pid // 4 % n_dblocks * tl.num_programs(1) + b) * L * 4 + k) * N   # (blocks, b, L, 4, N)
    dB_b, dC_b = dB_ptr + dBC, dC_ptr + dBC
    cs, bn = ch[None, :], ns[None, :] * sB_n
    ckpt_base = ckpt_ptr + (b * 4 + k) * n_tiles * d * N + dn_off
    n_here = tl.minimum(chunk_tiles, n_tiles - chunk * chunk_tiles)     # the last chunk may be shorter
    for i in tl.range(0, n_here, num_stages=STAGES):
        tile = chunk * chunk_tiles + n_here - 1 - i
        s = tile * BLOCK_T + rows
        s_mask = s < L
        p = _pixel(tl.minimum(s, L - 1), k, H, W)
        p_next = _pixel(tl.minimum(s + 1, L - 1), k, H, W)
        m2 = s_mask[:, None] & c_mask[None, :]
        mn = s_mask[:, None] & n_mask[None, :]
        # -- adjoint: g_t = C_t dy_t + a_{t+1} g_{t+1}, a reverse scan on the tile in time order; past the last
        #    step p_next repeats it: any finite decay, as the adjoint after the last step is zero --------------
        dt_next = _time_step(_load(dt_b + (p_next[:, None] * sd_l + cs), m2, EVEN).to(ACC), bias, m2, EVEN, FAST)
        Ct = _load(C_b + (p[:, None] * sB_l + bn), mn, EVEN).to(ACC)
        dy = _load(dy_b + (p[:, None] * sy_l + cs), m2, EVEN).to(ACC)
        an_cum, g_cum = tl.associative_scan((_exp(dt_next[:, :, None] * A[None, :, :], FAST),
                                             dy[:, :, None] * Ct[:, None, :]), 0, _compose, reverse=True)
        gs = g_cum + an_cum * g[None, :, :]
        g = _row(gs, rows, 0)
        if STATE_ONLY:
            P_acc = P_acc * _row(an_cum, rows, 0)
        else:
            # -- the tile's states, recomputed from the checkpoint ------------------------------------
            x = _load(x_b + (p[:, None] * sx_l + cs), m2, EVEN).to(ACC)
            v = _load(dt_b + (p[:, None] * sd_l + cs), m2, EVEN).to(ACC) + bias[None, :]
            dt, e = _softplus(v, FAST)                                    # softplus and its derivative share e
            if not EVEN:
                dt = tl.where(m2, dt, 0.0)
            Bt = _load(B_b + (p[:, None] * sB_l + bn), mn, EVEN).to(ACC)
            h0 = tl.load(ckpt_base + tile * d * N, mask=dn_mask, other=0.0)
            bt = (dt * x)[:, :, None] * Bt[:, None, :]
            a_cum, b_cum = tl.associative_scan((_exp(dt[:, :, None] * A[None, :, :], FAST), bt), 0, _compose)
            hs = a_cum * h0[None, :, :] + b_cum
            # -- gradients ----------------------------------------------------------------------------
            ah = hs - bt                                                  # a_t h_{t-1}
            ddt = tl.sum(gs * (ah * A[None, :, :] + x[:, :, None] * Bt[:, None, :]), 2)
            ddt = tl.where(v <= 20.0, ddt * (e / (1.0 + e)), ddt)        # softplus' = sigmoid
            if not EVEN:
                ddt = tl.where(m2, ddt, 0.0)
            dx = tl.sum(gs * Bt[:, None, :], 2) * dt + Dv[None, :] * dy
            dA += tl.sum(gs * ah * dt[:, :, None], 0)
            dD += tl.sum(dy * x, 0)
            dbias += tl.sum(ddt, 0)
            _store(ddt_b + (p[:, None] * sd_l + cs), ddt.to(ddt_ptr.dtype.element_ty), m2, EVEN)
            _store(dx_b + (p[:, None] * sg_l + cs), dx.to(dx_ptr.dtype.element_ty), m2, EVEN)
            dB = tl.sum(gs * (dt * x)[:, :, None], 1)                     # [T, N]: over the block's channels
            dC = tl.sum(hs * dy[:, :, None], 1)
            _store(dB_b + (p[:, None] * (4 * N) + ns[None, :]), dB, mn, EVEN)
            _store(dC_b + (p[:, None] * (4 * N) + ns[None, :]), dC, mn, EVEN)
    if STATE_ONLY:
        tl.store(carry_ptr + chunk_base + chunk * d * N, P_acc, mask=dn_mask)
        tl.store(carry_ptr + carry_half + chunk_base + chunk * d * N, g, mask=dn_mask)
    else:
        part = (b * n_chunks + chunk) * 4 * d + par
        tl.store(dA_ptr + part[:, None] * N + ns[None, :], dA, mask=dn_mask)
        tl.store(dD_ptr + part, dD, mask=c_mask)
        tl.store(dbias_ptr + part, dbias, mask=c_mask)
