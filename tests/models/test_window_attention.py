"""Window attention against a naive per-window, per-head implementation with shift and mask."""
import math

import pytest
import torch

from lamamba.ops.window_attention import window_attention


def naive_window_attention(x, qkv_w, qkv_b, proj_w, proj_b, table, heads, window, shift, qk_norm=None):
    B, H, W, C = x.shape
    wh, ww = min(window, H), min(window, W)
    sh = shift if H > window else 0
    sw = shift if W > window else 0
    Hp, Wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww
    xp = torch.zeros(B, Hp, Wp, C, dtype=x.dtype)
    xp[:, :H, :W] = x
    xr = torch.roll(xp, (-sh, -sw), (1, 2))
    out = torch.zeros_like(xr)
    hd = C // heads
    for b in range(B):
        for i0 in range(0, Hp, wh):
            for j0 in range(0, Wp, ww):
                coords = [(i, j) for i in range(i0, i0 + wh) for j in range(j0, j0 + ww)]
                tok = torch.stack([xr[b, i, j] for i, j in coords])                  # (N, C)
                qkv = tok @ qkv_w.T + qkv_b
                q, k, v = qkv.split(C, -1)
                res = []
                for h in range(heads):
                    sl = slice(h * hd, (h + 1) * hd)
                    qh, kh = q[:, sl], k[:, sl]
                    if qk_norm is not None:  # per-token standardisation over the head's channels, then affine
                        std = lambda a: (a - a.mean(-1, keepdim=True)) / torch.sqrt(a.var(-1, unbiased=False, keepdim=True) + 1e-5)
                        qh, kh = std(qh) * qk_norm[0] + qk_norm[1], std(kh) * qk_norm[2] + qk_norm[3]
                    logits = qh @ kh.T / math.sqrt(hd)
                    for a, (ia, ja) in enumerate(coords):
                        for c, (ic, jc) in enumerate(coords):
                            rel = (ia - ic + window - 1) * (2 * window - 1) + (ja - jc + window - 1)
                            logits[a, c] += table[rel, h]
                            # after the cyclic roll, tokens from the wrapped border must not mix
                            same = ((ia >= Hp - sh) == (ic >= Hp - sh)) and ((ja >= Wp - sw) == (jc >= Wp - sw))
                            if not same:
                                logits[a, c] = float("-inf")
                    res.append(logits.softmax(-1) @ v[:, sl])
                o = torch.cat(res, -1) @ proj_w.T + proj_b
                for n, (i, j) in enumerate(coords):
                    out[b, i, j] = o[n]
    return torch.roll(out, (sh, sw), (1, 2))[:, :H, :W]


@pytest.mark.parametrize("H,W,window,shift", [(8, 8, 4, 0), (8, 8, 4, 2), (4, 4, 8, 4), (6, 10, 4, 2),
                                              (5, 7, 4, 2), (12, 4, 4, 2)])
def test_matches_naive(H, W, window, shift):
    torch.manual_seed(0)
    C, heads = 8, 2
    x = torch.randn(2, H, W, C, dtype=torch.float64)
    params = [torch.randn(3 * C, C, dtype=torch.float64) * 0.3, torch.randn(3 * C, dtype=torch.float64),
              torch.randn(C, C, dtype=torch.float64) * 0.3, torch.randn(C, dtype=torch.float64),
              torch.randn((2 * window - 1) ** 2, heads, dtype=torch.float64)]
    params = [p.requires_grad_(True) for p in params]
    xg = x.clone().requires_grad_(True)
    out = window_attention(xg, *params[:4], params[4], heads, window, shift)
    ref = naive_window_attention(x, *[p.detach() for p in params], heads, window, shift)
    torch.testing.assert_close(out.detach(), ref)
    # gradients flow to the input and to every parameter, including the bias table
    out.square().sum().backward()
    assert xg.grad is not None and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_shift_changes_result_only_when_map_exceeds_window():
    torch.manual_seed(0)
    C, heads = 4, 1
    args = [torch.randn(3 * C, C), torch.randn(3 * C), torch.randn(C, C), torch.randn(C), torch.randn(49, heads)]
    small = torch.randn(1, 4, 4, C)
    torch.testing.assert_close(window_attention(small, *args, heads, 4, 2), window_attention(small, *args, heads, 4, 0))
    big = torch.randn(1, 8, 8, C)
    assert not torch.allclose(window_attention(big, *args, heads, 4, 2), window_attention(big, *args, heads, 4, 0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("C,heads,shift", [(320, 16, 4), (640, 16, 0), (64, 4, 4)])
def test_cuda_fused_path_matches_float64(C, heads, shift):
    """Head sizes like 20 are padded for the fused kernels; values and gradients must not change."""
    torch.manual_seed(0)
    x = torch.randn(2, 32, 32, C, dtype=torch.float64)
    params = [torch.randn(3 * C, C, dtype=torch.float64) / C ** 0.5, torch.randn(3 * C, dtype=torch.float64) * 0.1,
              torch.randn(C, C, dtype=torch.float64) / C ** 0.5, torch.randn(C, dtype=torch.float64) * 0.1,
              torch.randn(225, heads, dtype=torch.float64)]
    ref_in = [a.clone().requires_grad_(True) for a in [x] + params]
    ref = window_attention(ref_in[0], *ref_in[1:5], ref_in[5], heads, 8, shift)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, ref_in, g)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        cu_in = [a.detach().to("cuda", dtype).requires_grad_(True) for a in [x] + params]
        out = window_attention(cu_in[0], *cu_in[1:5], cu_in[5], heads, 8, shift)
        grads = torch.autograd.grad(out, cu_in, g.to("cuda", dtype))
        assert ((out.double().cpu() - ref).norm() / ref.norm()) < tol
        for a, r in zip(grads, ref_grads):
            assert ((a.double().cpu() - r).norm() / r.norm()) < tol


@pytest.mark.parametrize("shift", [0, 2])
def test_qk_norm_matches_naive(shift):
    """The opt-in LaMambaConfig.qk_norm: queries and keys layer-normalised per head (values and gradients)."""
    torch.manual_seed(1)
    C, heads, window = 8, 2, 4
    hd = C // heads
    x = torch.randn(2, 8, 8, C, dtype=torch.float64) * 3
    params = [torch.randn(3 * C, C, dtype=torch.float64) * 0.3, torch.randn(3 * C, dtype=torch.float64),
              torch.randn(C, C, dtype=torch.float64) * 0.3, torch.randn(C, dtype=torch.float64),
              torch.randn((2 * window - 1) ** 2, heads, dtype=torch.float64)]
    norm = [1 + 0.1 * torch.randn(hd, dtype=torch.float64), 0.1 * torch.randn(hd, dtype=torch.float64),
            1 + 0.1 * torch.randn(hd, dtype=torch.float64), 0.1 * torch.randn(hd, dtype=torch.float64)]
    norm = [p.requires_grad_(True) for p in norm]
    out = window_attention(x, *params[:4], params[4], heads, window, shift, qk_norm=tuple(norm))
    ref = naive_window_attention(x, *params, heads, window, shift, qk_norm=norm)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, norm, g), torch.autograd.grad(ref, norm, g))


def test_qk_norm_bounds_logits_of_large_inputs():
    """With qk_norm the largest attention logit no longer grows with the input scale."""
    from lamamba.models.lamamba import WindowAttention

    torch.manual_seed(0)
    attn = WindowAttention(16, 2, 4, 0, qk_norm=True).double()
    torch.nn.init.zeros_(attn.qkv.bias)
    x = torch.randn(1, 4, 4, 16, dtype=torch.float64)
    small, big = attn(x), attn(100 * x)
    assert torch.isfinite(big).all()
    # the attention pattern is scale-free; only the values (v) scale: out(100x) - proj.bias = 100 (out(x) - bias)
    torch.testing.assert_close(big - attn.proj.bias, 100 * (small - attn.proj.bias), rtol=1e-2, atol=1e-2)  # LN eps


@pytest.mark.parametrize("side,window,shift", [(8, 4, 2), (6, 4, 2), (4, 8, 0)])  # shifted, padded, one window
def test_module_tables_equal_the_cached_ones(side, window, shift):
    """A ``WindowAttention`` that knows its map side keeps the index and mask as buffers (moved with the module,
    never saved); its output is the functional op's, which takes them from the cache."""
    from lamamba.models.lamamba import WindowAttention
    from lamamba.ops.window_attention import window_attention

    torch.manual_seed(0)
    attn = WindowAttention(16, 2, window, shift, side=side).double()
    assert attn.relative_position_index.dtype == torch.long and "relative_position_index" not in attn.state_dict()
    x = torch.randn(2, side, side, 16, dtype=torch.float64)
    ref = window_attention(x, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias,
                           attn.relative_position_bias_table, 2, window, shift)
    torch.testing.assert_close(attn(x), ref, rtol=0, atol=0)
