"""The window-attention kernels (``lamamba.ops.triton_window_attention``, the Triton route of
``lamamba.ops.window_attention.window_attention``) against a naive float64 implementation written here: window
by window and head by head from the map's pixel coordinates, values and every gradient (input, projections, bias
table), shifted and unshifted, square and non-square windows, several programs per window and head.

The Triton route runs interpreted on CPU machines (``LAMAMBA_SCAN_BACKEND=triton``), compiled on GPUs.
"""
import math

import pytest
import torch
from triton_env import gpu, interpreter, rel_err

from lamamba.ops import triton_window_attention
from lamamba.ops.window_attention import window_attention


def naive(x, qkv_w, qkv_b, proj_w, proj_b, table, heads, window, shift):
    """Windows of the map shifted by (shift, shift) (each axis longer than the window), each token's logits over the
    tokens of its window that lie in its shift band, plus the table entry of their relative offset."""
    B, H, W, C = x.shape
    wh, ww = min(window, H), min(window, W)
    sh, sw = (shift if H > window else 0), (shift if W > window else 0)
    hd = C // heads
    qkv = x @ qkv_w.T + qkv_b
    out = torch.zeros(B, H, W, C, dtype=x.dtype)
    band = lambda pos, size, w, s: 0 if s == 0 else (pos >= size - w) + (pos >= size - s)
    for r0 in range(0, H, wh):
        for c0 in range(0, W, ww):
            rolled = [(r, c) for r in range(r0, r0 + wh) for c in range(c0, c0 + ww)]        # rolled frame
            pixels = [((r + sh) % H, (c + sw) % W) for r, c in rolled]
            rows = torch.tensor([p[0] for p in pixels])
            cols = torch.tensor([p[1] for p in pixels])
            tok = qkv[:, rows, cols]                                                         # (B, N, 3C)
            n = len(rolled)
            bias_index = torch.tensor([[(ra - r0 - (rb - r0) + window - 1) * (2 * window - 1)
                                        + (ca - c0 - (cb - c0) + window - 1) for rb, cb in rolled]
                                       for ra, ca in rolled])
            same = torch.tensor([[band(ra, H, wh, sh) == band(rb, H, wh, sh) and band(ca, W, ww, sw) ==
                                  band(cb, W, ww, sw) for rb, cb in rolled] for ra, ca in rolled])
            heads_out = []
            for h in range(heads):
                q = tok[..., h * hd:(h + 1) * hd]
                k = tok[..., C + h * hd:C + (h + 1) * hd]
                v = tok[..., 2 * C + h * hd:2 * C + (h + 1) * hd]
                logits = q @ k.transpose(1, 2) / math.sqrt(hd) + table[bias_index, h]
                logits = logits.masked_fill(~same, float("-inf"))
                heads_out.append(logits.softmax(-1) @ v)
            out = out.index_put((torch.arange(B)[:, None], rows[None].expand(B, n), cols[None].expand(B, n)),
                                torch.cat(heads_out, -1))
    return out @ proj_w.T + proj_b


def params(C, heads, window, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)
    return [r(3 * C, C) * 0.4, r(3 * C) * 0.3, r(C, C) * 0.3, r(C) * 0.1, r((2 * window - 1) ** 2, heads)]


def gradients(fn, x, ps, *args):
    leaves = [t.detach().clone().requires_grad_(True) for t in [x] + ps]
    out = fn(*leaves, *args)
    g = torch.Generator().manual_seed(1)
    d_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device)
    grads = torch.autograd.grad((out.double() * d_out).sum(), leaves)
    return out, grads


@pytest.fixture
def triton_route(monkeypatch):
    monkeypatch.setenv("LAMAMBA_SCAN_BACKEND", "triton")
    calls = []
    real = triton_window_attention._fwd_impl
    monkeypatch.setattr(triton_window_attention, "_fwd_impl", lambda *a: calls.append(a[2:]) or real(*a))
    return calls


# (B, H, W, C, heads, window, shift): shifted square windows; unshifted; one whole-map window (small maps: no
# shift); one of 36 tokens (a partly filled tile); non-square map with both axes shifted; an axis not longer than
# the window (shifted along rows only)
GEOMETRIES = [(2, 8, 8, 16, 2, 4, 2), (2, 8, 8, 16, 2, 4, 0), (3, 4, 4, 12, 3, 8, 4), (2, 6, 6, 8, 2, 8, 4),
              (1, 8, 12, 16, 4, 4, 2), (2, 12, 4, 16, 2, 4, 2)]


@interpreter
@pytest.mark.parametrize("B,H,W,C,heads,window,shift", GEOMETRIES)
def test_matches_naive(triton_route, B, H, W, C, heads, window, shift):
    x = torch.randn(B, H, W, C, generator=torch.Generator().manual_seed(2))
    ps = params(C, heads, window, torch.float32)
    out, grads = gradients(window_attention, x, ps, heads, window, shift)
    assert len(triton_route) == 1                                                 # the kernel route ran
    ref, ref_grads = gradients(naive, x.double(), [p.double() for p in ps], heads, window, shift)
    assert out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-5                                               # float32 rounding
    for name, got, want in zip(("x", "qkv_w", "qkv_b", "proj_w", "proj_b", "table"), grads, ref_grads):
        assert got.shape == want.shape and rel_err(got, want) < 1e-5, name


@interpreter
@pytest.mark.parametrize("max_samples,programs_per_sm", [(1, 1), (2, 1000), (16, 1)])
def test_samples_split_among_programs(triton_route, monkeypatch, max_samples, programs_per_sm):
    """One sample per program, several per program with a shorter last block, all in one: the table's gradient is
    the sum of the programs' partial sums."""
    monkeypatch.setattr(triton_window_attention, "LAUNCH",
                        triton_window_attention.WindowAttentionLaunch(programs_per_sm, max_samples))
    x = torch.randn(5, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    ps = params(8, 2, 4, torch.float32, seed=4)
    out, grads = gradients(window_attention, x, ps, 2, 4, 2)
    ref, ref_grads = gradients(naive, x.double(), [p.double() for p in ps], 2, 4, 2)
    assert rel_err(out, ref) < 1e-5
    assert all(rel_err(got, want) < 1e-5 for got, want in zip(grads, ref_grads))


@interpreter
def test_padded_maps_large_windows_and_float64_take_the_pytorch_route(triton_route, monkeypatch):
    """Maps the window does not divide, windows of more than 64 tokens (global attention on a stage's whole map)
    and float64 activations use scaled_dot_product_attention."""
    ps = params(8, 2, 4, torch.float64)
    padded = torch.randn(1, 6, 10, 8, dtype=torch.float64)
    divisible = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(window_attention(divisible, *ps, 2, 4, 2), naive(divisible, *ps, 2, 4, 2))
    out = window_attention(padded.float(), *[p.float() for p in ps], 2, 4, 2)
    big = params(8, 2, 12, torch.float32)
    whole_map = window_attention(torch.randn(1, 12, 12, 8), *big, 2, 12, 0)         # one window of 144 tokens
    assert triton_route == []
    monkeypatch.setenv("LAMAMBA_SCAN_BACKEND", "reference")
    torch.testing.assert_close(out, window_attention(padded.float(), *[p.float() for p in ps], 2, 4, 2))
    assert whole_map.shape == (1, 12, 12, 8)


@interpreter
def test_half_precision(triton_route):
    """float16 activations with a float32 table: a float16 output within rounding of the reference, float16
    gradients. (bfloat16 runs on GPUs, ``test_gpu_bf16_model_shapes``: Triton's interpreter multiplies bfloat16
    tiles wrongly.)"""
    x = torch.randn(2, 8, 8, 16, generator=torch.Generator().manual_seed(5))
    ps = params(16, 2, 4, torch.float32)
    out, grads = gradients(window_attention, x.half(), [p.half() for p in ps[:4]] + ps[4:], 2, 4, 2)
    ref, ref_grads = gradients(naive, x.double(), [p.double() for p in ps], 2, 4, 2)
    assert out.dtype == torch.float16 and grads[0].dtype == torch.float16 and grads[5].dtype == torch.float32
    assert rel_err(out, ref) < 5e-3
    assert all(rel_err(got, want) < 1e-2 for got, want in zip(grads, ref_grads))


@interpreter
def test_opcheck(triton_route):
    """Schemas and fake (meta) implementations of the forward and backward custom ops."""
    qkv = torch.randn(2, 8, 8, 24)
    table = torch.randn(49, 2)
    args = (qkv, table, 2, 4, 4, 4, 2, 2)
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(triton_window_attention._fwd, args, test_utils=checks)
    o, lse = triton_window_attention._fwd(*args)
    torch.library.opcheck(triton_window_attention._bwd, (torch.randn_like(o), qkv, table, lse, 2, 4, 4, 4, 2, 2),
                          test_utils=checks)


@gpu
@pytest.mark.parametrize("H,C,heads,shift", [(32, 96, 6, 4), (32, 320, 16, 0), (8, 1280, 16, 0)])
def test_gpu_bf16_model_shapes(H, C, heads, shift):
    """The kernels against the PyTorch route (SDPA) at LaMamba-Diff-S / XL stage shapes in bf16: values and
    gradients within bf16 rounding."""
    torch.manual_seed(0)
    x = torch.randn(8, H, H, C, device="cuda")
    ps = [p.cuda() for p in params(C, heads, 8, torch.float32)]

    def run(backend):
        import os
        os.environ["LAMAMBA_SCAN_BACKEND"] = backend
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return gradients(window_attention, x, ps, heads, 8, shift)
        finally:
            os.environ.pop("LAMAMBA_SCAN_BACKEND")

    out, grads = run("triton")
    ref, ref_grads = run("reference")
    assert rel_err(out, ref) < 2e-2
    for got, want in zip(grads, ref_grads):
        assert rel_err(got, want) < 3e-2
