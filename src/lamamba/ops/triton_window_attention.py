"""Launch of the window-attention kernels (``lamamba.ops.triton_window_attention_kernels``) as ``torch.library``
custom ops: one opaque node for ``torch.compile``, meta shapes for tracing. Under ``TRITON_INTERPRET=1`` (set
before triton is first imported) the kernels also run on CPU tensors (tests). Called through
``lamamba.ops.window_attention.window_attention``, which picks the route.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from lamamba.ops import triton_window_attention_kernels as kernels
from lamamba.ops.triton_common import check_device, next_power_of_2, sm_count
from lamamba.ops.triton_launch import launch, precompile
from lamamba.ops.window_layout import relative_index


@dataclass(frozen=True)
class WindowAttentionLaunch:
    """How the kernels share the samples among programs; replace ``LAUNCH`` (``dataclasses.replace``) to re-tune."""
    programs_per_sm: int = 8     # programs (window, head, block of samples) per SM the split aims for
    max_samples: int = 16        # samples one program loops over, at most
    num_warps: int = 0           # 0: 4, or 8 for tiles of more than 8,192 elements


LAUNCH = WindowAttentionLaunch()


@functools.lru_cache(maxsize=None)
def _launch(B: int, win_heads: int, N: int, hd: int, device: torch.device,
            cfg: WindowAttentionLaunch) -> tuple[int, int, int, int, int]:
    """(samples per program, sample blocks, BLOCK_N, BLOCK_D, num_warps); plain integers, cached."""
    per = max(1, min(cfg.max_samples, B * win_heads // (cfg.programs_per_sm * sm_count(device))))
    block_n, block_d = max(16, next_power_of_2(N)), max(16, next_power_of_2(hd))
    warps = cfg.num_warps or (4 if block_n * max(block_n, block_d) <= 8192 else 8)
    return per, -(-B // per), block_n, block_d, warps


def _pair_to_table(wh: int, ww: int, window: int, device: torch.device) -> Tensor:
    """(table rows, N * N) float32 0/1 matrix: token pairs -> their bias table row (the table's gradient as a
    product: deterministic, unlike a scatter-add). Built on the device at every call, never cached: the backward runs
    inside CUDA graphs' memory pools, where a cached tensor would stay alive (Inductor's CUDA-graph trees then stop
    training with "tensor(s) in the cudagraph pool not tracked as outputs")."""
    index = relative_index(wh, ww, window, device).flatten()
    rows = torch.arange((2 * window - 1) ** 2, device=device)
    return (rows[:, None] == index[None, :]).float()


def _geometry(qkv: Tensor, heads: int, wh: int, ww: int) -> tuple[int, int, int, int, int, int]:
    B, H, W, C3 = qkv.shape
    C = C3 // 3
    return B, H, W, C, C // heads, H // wh * (W // ww) * heads


def _precision(dtype: torch.dtype) -> str:
    """IEEE float32 products for float32 inputs (the reference's precision), tensor cores' native ones otherwise."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _fwd_impl(qkv: Tensor, table: Tensor, heads: int, window: int, wh: int, ww: int, sh: int,
              sw: int) -> tuple[Tensor, Tensor]:
    """(o (B, H, W, C), lse (B, windows * heads, N) float32); qkv (B, H, W, 3C) contiguous."""
    check_device(qkv.device, kernels.window_attn_fwd_kernel, "window attention")
    B, H, W, C, hd, win_heads = _geometry(qkv, heads, wh, ww)
    N = wh * ww
    o = qkv.new_empty((B, H, W, C))
    lse = qkv.new_empty((B, win_heads, N), dtype=torch.float32)
    per, blocks, block_n, block_d, warps = _launch(B, win_heads, N, hd, qkv.device, LAUNCH)
    launch(kernels.window_attn_fwd_kernel, (win_heads, blocks),
        qkv, table, o, lse, B, H, W, C, hd, heads, wh, ww, sh, sw, N, window, per, hd ** -0.5,
        qkv.stride(0), qkv.stride(2), o.stride(0), o.stride(2),
        BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=_precision(qkv.dtype), num_warps=warps)
    return o, lse


_fwd = torch.library.custom_op("lamamba::window_attention_fwd", _fwd_impl, mutates_args=())


@_fwd.register_fake
def _(qkv, table, heads, window, wh, ww, sh, sw):
    precompile(_fwd_impl, qkv, table, heads, window, wh, ww, sh, sw)
    B, H, W, C, hd, win_heads = _geometry(qkv, heads, wh, ww)
    return qkv.new_empty((B, H, W, C)), qkv.new_empty((B, win_heads, wh * ww), dtype=torch.float32)


def _bwd_impl(do: Tensor, qkv: Tensor, table: Tensor, lse: Tensor, heads: int, window: int, wh: int, ww: int,
              sh: int, sw: int) -> tuple[Tensor, Tensor]:
    """(dqkv in qkv's layout, dtable in the table's shape and dtype)."""
    B, H, W, C, hd, win_heads = _geometry(qkv, heads, wh, ww)
    N = wh * ww
    do = do.contiguous()
    dqkv = torch.empty_like(qkv)
    per, blocks, block_n, block_d, warps = _launch(B, win_heads, N, hd, qkv.device, LAUNCH)
    part = qkv.new_empty((blocks, win_heads // heads, heads, N, N), dtype=torch.float32)
    launch(kernels.window_attn_bwd_kernel, (win_heads, blocks),
        do, qkv, table, lse, dqkv, part, B, H, W, C, hd, heads, wh, ww, sh, sw, N, window, per, hd ** -0.5,
        qkv.stride(0), qkv.stride(2), do.stride(0), do.stride(2),
        BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=_precision(qkv.dtype), num_warps=warps)
    per_head = part.sum((0, 1)).view(heads, N * N)                          # over sample blocks and windows
    dtable = (_pair_to_table(wh, ww, window, qkv.device) @ per_head.t()).to(table.dtype)
    return dqkv, dtable


_bwd = torch.library.custom_op("lamamba::window_attention_bwd", _bwd_impl, mutates_args=())


@_bwd.register_fake
def _(do, qkv, table, lse, heads, window, wh, ww, sh, sw):
    precompile(_bwd_impl, do, qkv, table, lse, heads, window, wh, ww, sh, sw)
    return torch.empty_like(qkv), torch.empty_like(table)


def _setup_context(ctx, inputs, output):
    qkv, table, heads, window, wh, ww, sh, sw = inputs
    ctx.geometry = (heads, window, wh, ww, sh, sw)
    ctx.save_for_backward(qkv, table, output[1])


def _backward(ctx, do, dlse=None, bwd=_bwd):
    qkv, table, lse = ctx.saved_tensors
    dqkv, dtable = bwd(do, qkv, table, lse, *ctx.geometry)
    return dqkv, dtable, None, None, None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The same forward and backward without the custom-op dispatch (its per-call host time shows in launch-bound
    eager runs of small models); ``torch.compile`` traces the custom op."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _fwd_impl(*inputs)
        _setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(output[1])
        return output

    @staticmethod
    def backward(ctx, do, dlse):
        return _backward(ctx, do, bwd=_bwd_impl)


def window_attention(qkv: Tensor, table: Tensor, heads: int, window: int, wh: int, ww: int, sh: int,
                     sw: int) -> Tensor:
    """Attention output (B, H, W, C) of the projected map ``qkv`` (B, H, W, 3C); windows ``wh x ww`` dividing the
    map, shifts ``(sh, sw)``, bias ``table`` ((2 window - 1)**2, heads)."""
    qkv, table = qkv.contiguous(), table.contiguous()
    args = (qkv, table, heads, window, wh, ww, sh, sw)
    traced = torch.compiler.is_compiling() or qkv.device.type == "meta"
    return _fwd(*args)[0] if traced else _Eager.apply(*args)[0]
