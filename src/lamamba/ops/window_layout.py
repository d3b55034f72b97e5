"""Swin's window layout on channels-last maps: the geometry on a map, the relative-position index, the
shifted-window mask, and the window partition and its inverse.

Pure functions of the sizes, shared by both routes of ``lamamba.ops.window_attention`` (the PyTorch route and the
Triton kernels' bias-table gradient). The index and the mask depend only on sizes, so they are built once per size
and device and cached (no per-forward host work); a module that knows its map size keeps them as buffers
(``attention_tables``; ``LaMambaDiff`` does).
"""
from __future__ import annotations

import torch
from torch import Tensor

_cache: dict[tuple, Tensor] = {}


def window_geometry(H: int, W: int, window: int, shift: int) -> tuple[int, int, int, int]:
    """(window_h, window_w, shift_h, shift_w) actually used on an H x W map."""
    wh, ww = min(window, H), min(window, W)
    sh = shift if H > window else 0
    sw = shift if W > window else 0
    return wh, ww, sh, sw


def relative_position_index(wh: int, ww: int, window: int, device: torch.device | str = "cpu") -> Tensor:
    """(wh*ww, wh*ww) index into a ((2*window-1)**2)-row bias table (Swin's relative index), cached per device.

    A window smaller than ``window`` (small maps) uses the subset of the full table for its offsets, so
    the parameters do not depend on the resolution.
    """
    key = ("rpi", wh, ww, window, str(device))
    if key not in _cache:
        _cache[key] = relative_index(wh, ww, window, device)
    return _cache[key]


def relative_index(wh: int, ww: int, window: int, device: torch.device | str) -> Tensor:
    """``relative_position_index`` computed on ``device`` and not cached: for code that runs inside CUDA graphs and
    their memory pools (a tensor cached there would stay alive in the pool: Inductor's CUDA-graph trees refuse that,
    and a host-to-device copy cannot be captured)."""
    tokens = torch.arange(wh * ww, device=device)
    r, c = tokens // ww, tokens % ww
    return (r[:, None] - r[None, :] + window - 1) * (2 * window - 1) + c[:, None] - c[None, :] + window - 1


def shifted_window_mask(Hp: int, Wp: int, wh: int, ww: int, sh: int, sw: int,
                        device: torch.device | str = "cpu") -> Tensor | None:
    """Boolean (num_windows, wh*ww, wh*ww) mask, True where attention is allowed; None if unshifted.

    After the cyclic roll by (-sh, -sw), tokens that were not neighbours in the original map share a
    window; Swin labels the 3 x 3 regions ``[0, Hp-wh), [Hp-wh, Hp-sh), [Hp-sh, Hp)`` per axis and lets
    only tokens of the same region attend to each other.
    """
    if sh == 0 and sw == 0:
        return None
    key = ("mask", Hp, Wp, wh, ww, sh, sw, str(device))
    if key not in _cache:
        img = torch.zeros(Hp, Wp, device="cpu")
        label = 0
        for hs in ((0, Hp - wh), (Hp - wh, Hp - sh), (Hp - sh, Hp)) if sh else ((0, Hp),):
            for ws in ((0, Wp - ww), (Wp - ww, Wp - sw), (Wp - sw, Wp)) if sw else ((0, Wp),):
                img[hs[0]:hs[1], ws[0]:ws[1]] = label
                label += 1
        win = window_partition(img[None, :, :, None], wh, ww).squeeze(-1)          # (nW, N)
        _cache[key] = (win[:, :, None] == win[:, None, :]).to(device)
    return _cache[key]


def attention_tables(H: int, W: int, window: int, shift: int,
                     device: torch.device | str = "cpu") -> tuple[Tensor, Tensor | None]:
    """(relative-position index, shifted-window mask or None) that ``window_attention`` uses on an H x W map."""
    wh, ww, sh, sw = window_geometry(H, W, window, shift)
    Hp, Wp = H + (-H) % wh, W + (-W) % ww
    return (relative_position_index(wh, ww, window, device),
            shifted_window_mask(Hp, Wp, wh, ww, sh, sw, device))


def window_partition(x: Tensor, wh: int, ww: int) -> Tensor:
    """(B, H, W, C) -> (B * nW, wh*ww, C); windows row-major over the grid, tokens row-major inside."""
    B, H, W, C = x.shape
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def window_reverse(windows: Tensor, wh: int, ww: int, H: int, W: int) -> Tensor:
    """Inverse of ``window_partition``: (B * nW, wh*ww, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)
