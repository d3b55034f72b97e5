"""Shifted-window multi-head self-attention (Swin W-MSA / SW-MSA, Liu et al. 2021) on channels-last maps.

The layout helpers (``lamamba.ops.window_layout``) are pure functions of the map size, cached per
size and device. A module that knows its map size keeps the index and the mask as buffers (``attention_tables``;
``LaMambaDiff`` does): a compiled graph then reads them like weights and never traces their construction, however
the model was compiled.

On the Triton route (``lamamba.ops.selective_scan.scan_backend``: CUDA with Triton, or
``LAMAMBA_SCAN_BACKEND=triton``) and maps the window divides, the attention itself is one kernel each way
(``lamamba.ops.triton_window_attention``) that reads the projected map in place: no roll, window partition,
head split or bias tensor is materialised. Elsewhere (CPU, padded maps, windows of more than 64 tokens such as
``attention="global"``, ``qk_norm``, float64) the PyTorch route below computes the same thing with
``scaled_dot_product_attention``.

Window geometry (``window_geometry``): each axis uses window ``min(window, side)``; an axis whose side is
not larger than the window is a single whole-axis window and is never shifted (the released code's rule
for small maps, generalised to non-square maps). Maps that the window does not divide are padded
(zeros, as Swin does) and cropped after attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lamamba.ops.selective_scan import scan_backend
from lamamba.ops.window_layout import attention_tables, window_geometry, window_partition, window_reverse

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_KERNEL_MAX_TOKENS = 64     # a window is one tile of the kernels (Swin's 8 x 8); larger ones (global attention) use SDPA


def window_attention(x: Tensor, qkv_weight: Tensor, qkv_bias: Tensor | None, proj_weight: Tensor,
                     proj_bias: Tensor | None, bias_table: Tensor, num_heads: int, window: int,
                     shift: int, qk_norm: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
                     tables: tuple[Tensor, Tensor | None] | None = None) -> Tensor:
    """Shifted-window attention with relative position bias on a (B, H, W, C) map.

    ``qk_norm`` = (q weight, q bias, k weight, k bias): layer-normalise queries and keys per head over
    ``head_dim`` before the dot product (opt-in ``LaMambaConfig.qk_norm``; not in the released model).
    ``tables``: ``attention_tables(H, W, window, shift)`` kept by the caller (else taken from the cache).

    ``bias_table``: ((2*window-1)**2, heads). Attention logits are ``q k^T / sqrt(head_dim) + bias``,
    with logits between tokens of different shifted regions removed (Swin adds -100; we mask them out
    exactly), computed with ``scaled_dot_product_attention``.
    """
    B, H, W, C = x.shape
    wh, ww, sh, sw = window_geometry(H, W, window, shift)
    pad_h, pad_w = (-H) % wh, (-W) % ww
    if (qk_norm is None and not (pad_h or pad_w) and wh * ww <= _KERNEL_MAX_TOKENS and x.dtype in _KERNEL_DTYPES
            and qkv_weight.dtype in _KERNEL_DTYPES and scan_backend(x.device) == "triton"):
        from lamamba.ops import triton_window_attention as kernel
        qkv = F.linear(x, qkv_weight, qkv_bias)                # per token: commutes with the roll and the windows
        out = kernel.window_attention(qkv, bias_table, num_heads, window, wh, ww, sh, sw)
        return F.linear(out, proj_weight, proj_bias)
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    if sh or sw:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    windows = window_partition(x, wh, ww)                                             # (B*nW, N, C)
    n_win, N, hd = Hp // wh * (Wp // ww), wh * ww, C // num_heads
    qkv = F.linear(windows, qkv_weight, qkv_bias).view(B, n_win, N, 3, num_heads, hd)
    # windows folded into the head axis: (B, nW*h, N, hd), so one (nW*h, N, N) bias broadcasts over the batch
    q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, B, n_win * num_heads, N, hd).unbind(0)
    if qk_norm is not None:
        q = F.layer_norm(q, (hd,), qk_norm[0], qk_norm[1])
        k = F.layer_norm(k, (hd,), qk_norm[2], qk_norm[3])
    index, mask = tables if tables is not None else attention_tables(H, W, window, shift, x.device)
    bias = bias_table[index.view(-1)].view(N, N, num_heads).permute(2, 0, 1).to(q.dtype)  # (h, N, N)
    if mask is None:
        bias = bias.expand(n_win, -1, -1, -1)
    else:
        bias = bias[None].masked_fill(~mask[:, None], float("-inf"))
    bias = bias.reshape(1, n_win * num_heads, N, N)
    pad = (-hd) % 8 if x.is_cuda else 0
    if pad:  # the fused SDPA kernels need head sizes that are multiples of 8 (XL's first stage has 20)
        q, k, v = (F.pad(a, (0, pad)) for a in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=hd ** -0.5)   # (B, nW*h, N, hd+pad)
    out = out[..., :hd].view(B, n_win, num_heads, N, hd).permute(0, 1, 3, 2, 4).reshape(B * n_win, N, C)
    out = F.linear(out, proj_weight, proj_bias)
    x = window_reverse(out, wh, ww, Hp, Wp)
    if sh or sw:
        x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
    return x[:, :H, :W].contiguous() if (pad_h or pad_w) else x
