"""The four spatially continuous scan paths of LaMamba-Diff's SS2D (SPEC Part B section 3.3, Part A).

A path lists, in scan order, which pixel (row-major index ``r * W + c``) is visited at each step.
Consecutive steps are always grid neighbours ("spatially continuous", Yang et al. 2024, PlainMamba):

* k = 0: boustrophedon over rows from the top-left corner (even rows left->right, odd rows right->left);
* k = 1: the exact reverse of path 0;
* k = 2: boustrophedon over columns from the bottom-left corner going up (even columns bottom->top,
  odd columns top->bottom);
* k = 3: the exact reverse of path 2.

On square maps of even side these are the released code's permutations; here they are defined for any
H x W. Paths depend only on (H, W), so they are built once per size and cached per device.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

NUM_PATHS = 4


@functools.lru_cache(maxsize=64)
def _paths_cpu(H: int, W: int) -> Tensor:
    grid = torch.arange(H * W, device="cpu").view(H, W)  # never under a default-device context
    rows = grid.clone()
    rows[1::2] = rows[1::2].flip(1)                      # odd rows right -> left
    path0 = rows.reshape(-1)
    cols = grid.flip(0).t().clone()                      # column c read bottom -> top
    cols[1::2] = cols[1::2].flip(1)                      # odd columns top -> bottom
    path2 = cols.reshape(-1)
    return torch.stack([path0, path0.flip(0), path2, path2.flip(0)])  # (4, H*W)


_device_cache: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}


def scan_paths(H: int, W: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """``(paths, inverse)``, both (4, H*W) int64 on ``device``: ``inverse[k][paths[k][s]] = s``.

    Cached, so a forward pass never rebuilds index tensors or copies them to the device again.
    """
    if H < 1 or W < 1:
        raise ValueError(f"scan paths need a non-empty map, got {H}x{W}")
    key = (H, W, str(device))
    if key not in _device_cache:
        paths = _paths_cpu(H, W)
        _device_cache[key] = (paths.to(device), paths.argsort(dim=1).to(device))
    return _device_cache[key]


def cross_scan(x: Tensor, paths: Tensor) -> Tensor:
    """(batch, L, C) pixel order -> (batch, 4, L, C): the sequence each direction scans.

    ``index_select`` rather than ``x[:, paths]``: its backward adds rows with ``index_add`` where advanced indexing's
    accumulates with ``index_put`` (on a 2-core CPU at the digits demo's first stage 0.6 vs 2.5 ms forward + backward).
    """
    return x.index_select(1, paths.reshape(-1)).view(x.shape[0], *paths.shape, *x.shape[2:])


def cross_merge(ys: Tensor, inverse: Tensor) -> Tensor:
    """(batch, 4, L, C) in scan order -> (batch, L, C): back to pixel order, summed over directions."""
    index = inverse[None, :, :, None].expand(ys.shape[0], -1, -1, ys.shape[-1])
    return ys.gather(2, index).sum(1)
