"""Triton selective scan: the Mamba-layout forward/backward used by ``selective_scan`` (SS2D's own
four-direction scan is ``lamamba.ops.triton_ss2d``).

Kernels live in ``lamamba.ops.triton_scan_kernels`` (design notes there). Launch configuration:

* grid ``(batch, groups * ceil(d / BLOCK_D))``: one program per batch element, group and block of channels;
* tiles of ``BLOCK_T`` time steps x ``BLOCK_D`` channels x ``BLOCK_N`` (= state size rounded up to a power
  of two, masked) solved by one parallel scan; sizes from ``LAUNCH`` (a ``LaunchConfig``).

The backward needs the state entering every tile: the backward (whose custom op saves only the inputs)
recomputes them with a state-only pass of the forward kernel. States and all accumulation are float32 (float64 for float64
inputs). Under ``TRITON_INTERPRET=1`` (set before triton is first imported) the kernels also run on
CPU tensors, through Triton's interpreter (slow; for tests).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Optional

import torch
import triton
from torch import Tensor

from lamamba.ops import triton_scan_kernels
from lamamba.ops.triton_common import accumulation_dtype, check_device, sm_count, tl_dtype
from lamamba.ops.triton_launch import launch


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and launch parameters (chosen from H100 register budgets: no spills at the defaults).

    ``block_t`` time steps per tile; ``block_d * block_n <= state_lanes`` (``block_n`` is the state size
    rounded up to a power of two), so a tile holds ``block_t * state_lanes`` elements at most;
    ``block_d`` is halved (not below ``min_block_d``) while the grid would have fewer than
    ``programs_per_sm`` programs per SM. ``num_stages > 1`` software-pipelines the tile loads (more
    registers, fewer resident programs). Replace ``LAUNCH`` (e.g. with ``dataclasses.replace``) to re-tune.
    """
    block_t: int = 16
    state_lanes: int = 256
    max_block_d: int = 64
    min_block_d: int = 4
    num_warps: int = 4          # forward kernel (H100 sweep, docs/PERFORMANCE.md: 4 beat 8 and 2)
    bwd_num_warps: int = 2      # backward kernel (H100 sweep: 2 beat 4 and 8)
    num_stages: int = 1
    programs_per_sm: int = 2


LAUNCH = LaunchConfig()


# ------------------------------------------------------------------------------------------------
#                                   Launch helpers
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tiles:
    BLOCK_T: int
    BLOCK_D: int
    BLOCK_N: int

    def chunks(self, L: int) -> int:
        return triton.cdiv(L, self.BLOCK_T)

    def blocks(self, d: int) -> int:
        return triton.cdiv(d, self.BLOCK_D)

    def meta(self, backward: bool = False) -> dict:
        """Compile-time launch arguments of a forward (or, with ``backward``, a backward) kernel call."""
        warps = LAUNCH.bwd_num_warps if backward else LAUNCH.num_warps
        return dict(asdict(self), STAGES=LAUNCH.num_stages, num_warps=warps)


def _tiles(N: int, d: int, rows: int, device: torch.device) -> _Tiles:
    """Tiles for state size ``N`` and ``d`` channels per direction, ``rows`` programs per channel block."""
    cfg = LAUNCH
    block_n = triton.next_power_of_2(N)
    block_d = max(1, min(cfg.max_block_d, cfg.state_lanes // block_n, triton.next_power_of_2(d)))
    while block_d > cfg.min_block_d and rows * triton.cdiv(d, block_d) < cfg.programs_per_sm * sm_count(device):
        block_d //= 2
    return _Tiles(cfg.block_t, block_d, block_n)


def _kernels(device: torch.device) -> ModuleType:
    """The kernel module, after checking that ``device`` can run it."""
    check_device(device, triton_scan_kernels.scan_fwd_kernel, "scan")
    return triton_scan_kernels


def _or(t: Optional[Tensor], fallback: Tensor) -> Tensor:
    """A pointer argument for an absent optional tensor (never dereferenced: its HAS_ flag is off)."""
    return fallback if t is None else t


@dataclass(frozen=True)
class _Launch:
    """Grid, tiles, sizes and strides of one problem (the kernels' shared leading scalar arguments)."""
    tiles: _Tiles
    batch: int
    L: int
    d: int          # channels per direction
    N: int
    K: int          # groups (channels sharing B and C)
    strides: tuple  # x-like, delta-like, B-like: (batch, direction, channel|state, position) each

    @property
    def grid(self) -> tuple[int, int]:
        return (self.batch, self.K * self.tiles.blocks(self.d))

    @property
    def chunks(self) -> int:
        return self.tiles.chunks(self.L)

    @property
    def atomic_bc(self) -> bool:
        """Several programs add into the same dB, dC entries (more than one channel block per direction)."""
        return self.tiles.blocks(self.d) > 1

    def scalars(self) -> tuple:
        return (self.L, self.d, self.N, self.K, self.tiles.blocks(self.d), self.chunks, *self.strides)

    def states(self, like: Tensor, dtype: torch.dtype) -> Tensor:
        """Buffer for the state entering every tile: (batch, K, chunks, d, N)."""
        return like.new_empty((self.batch, self.K, self.chunks, self.d, self.N), dtype=dtype)

    def bwd_buffers(self, like: Tensor, B: Tensor, dtype: torch.dtype) -> tuple[Tensor, ...]:
        """dB, dC (zeroed when added atomically) and the per-batch partial sums of dA, dD, ddelta_bias."""
        new_bc = torch.zeros if self.atomic_bc else torch.empty
        dB, dC = (new_bc(B.shape, dtype=dtype, device=like.device) for _ in range(2))
        params = (self.batch, self.K * self.d)
        return (dB, dC, like.new_empty((*params, self.N), dtype=dtype), like.new_empty(params, dtype=dtype),
                like.new_empty(params, dtype=dtype))


# ------------------------------------------------------------------------------------------------
#                     Mamba layout: (batch, channels, L) signals, grouped B and C
# ------------------------------------------------------------------------------------------------

def _mamba_launch(u: Tensor, A: Tensor, B: Tensor) -> _Launch:
    batch, channels, L = u.shape
    groups, N = B.shape[1], A.shape[1]
    d = channels // groups
    sb, sc, sl = u.stride()
    strides = (sb, d * sc, sc, sl) * 2 + tuple(B.stride())   # u-like and delta-like share the layout
    return _Launch(_tiles(N, d, batch * groups, u.device), batch, L, d, N, groups, strides)


def _mamba_flags(D, z, delta_bias, delta_softplus) -> dict:
    return dict(HAS_D=D is not None, HAS_BIAS=delta_bias is not None,
                HAS_Z=z is not None, SOFTPLUS=bool(delta_softplus))


def selective_scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                       z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool
                       ) -> tuple[Tensor, Tensor]:
    """Selective scan on the normalised shapes of ``selective_scan``: u, delta, z (batch, channels, L)
    contiguous; A (channels, N); B, C (batch, groups, N, L) contiguous; D, delta_bias (channels,).

    Returns ``out`` in u's dtype and the last state (batch, channels, N) in float32 (float64 for float64).
    """
    plan = _mamba_launch(u, A, B)
    acc = accumulation_dtype(u.dtype)
    out = torch.empty_like(u)
    last = u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=acc)
    launch(_kernels(u.device).scan_fwd_kernel, plan.grid,
        u, delta, A, B, C, _or(D, A), _or(delta_bias, A), _or(z, u), out, last, A, *plan.scalars(),
        **_mamba_flags(D, z, delta_bias, delta_softplus), WRITE_OUT=True, STORE_LAST=True, STORE_CKPT=False,
        ACC=tl_dtype(acc), **plan.tiles.meta())
    return out, last


def selective_scan_bwd(dout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                       delta_softplus: bool) -> list[Tensor]:
    """Gradients w.r.t. (u, delta, A, B, C, D, z, delta_bias), each in its input's shape and dtype;
    ``u.new_empty(0)`` for an absent optional argument. ``dout`` must be contiguous like ``u``.

    Two launches: a state-only forward pass that stores the state entering every tile, then the
    reverse-time pass.
    """
    plan = _mamba_launch(u, A, B)
    acc = accumulation_dtype(u.dtype)
    kernels, flags = _kernels(u.device), _mamba_flags(D, z, delta_bias, delta_softplus)
    states = plan.states(u, acc)
    launch(kernels.scan_fwd_kernel, plan.grid,
        u, delta, A, B, C, _or(D, A), _or(delta_bias, A), _or(z, u), u, A, states, *plan.scalars(),
        **flags, WRITE_OUT=False, STORE_LAST=False, STORE_CKPT=True, ACC=tl_dtype(acc), **plan.tiles.meta())
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else u.new_empty(0)
    dB, dC, dA, dD, dbias = plan.bwd_buffers(u, B, acc)
    launch(kernels.scan_bwd_kernel, plan.grid,
        dout, u, delta, A, B, C, _or(D, A), _or(delta_bias, A), _or(z, u), states,
        du, ddelta, dz, dB, dC, dA, dD, dbias, *plan.scalars(),
        **flags, ATOMIC_BC=plan.atomic_bc, ACC=tl_dtype(acc), **plan.tiles.meta(backward=True))
    empty = u.new_empty(0)
    return [du, ddelta, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            empty if D is None else dD.sum(0).to(D.dtype), dz,
            empty if delta_bias is None else dbias.sum(0).to(delta_bias.dtype)]
