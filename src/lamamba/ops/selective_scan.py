"""The selective scan (Mamba's S6 recurrence), with mamba-ssm's ``selective_scan_fn`` argument layout.

For every channel ``d``, state index ``n`` and time ``t`` (``h_{-1} = 0``)::

    delta_t = softplus(delta_t + delta_bias_d)            (bias and softplus optional)
    h_t[n]  = exp(delta_t * A[d, n]) * h_{t-1}[n] + delta_t * B_t[n] * u_t       (ZOH for A, Euler for B)
    y_t     = sum_n C_t[n] * h_t[n] + D_d * u_t
    out_t   = y_t * silu(z_t)                              (gate optional)

Shapes: ``u, delta, z``: (batch, channels, length); ``A``: (channels, state); ``B, C``: (batch, groups,
state, length) with channels split evenly over groups (also accepted: (batch, state, length) = one group,
or (channels, state) = time-invariant); ``D, delta_bias``: (channels,).

This module holds the pure-PyTorch reference (any device, fp32 accumulation, float64 when given
float64) and the dispatch to the Triton kernels (``lamamba.ops.triton_scan``; SS2D has its own,
``lamamba.ops.triton_ss2d``) on CUDA. The computation is wrapped in a ``torch.library`` custom op so that
``torch.compile`` sees one opaque node, the FLOP counter can apply the paper's counting rule, and meta tensors
(shape-only tracing) work.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lamamba.ops.triton_common import grad_needed
from lamamba.ops.triton_launch import precompile

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "reference", "triton")
BACKEND_ENV = "LAMAMBA_SCAN_BACKEND"


# ------------------------------------------------------------------------------------------------
#                                 Backend selection
# ------------------------------------------------------------------------------------------------

@torch.compiler.assume_constant_result   # a constant under torch.compile (not traced through the cache)
@functools.lru_cache(maxsize=None)
def _triton_available() -> bool:
    try:
        from lamamba.ops import triton_scan, triton_ss2d  # noqa: F401
    except Exception as e:  # triton missing or too old: fall back with one clear warning
        logger.warning("Triton selective scan unavailable (%s); using the PyTorch reference.", e)
        return False
    return True


def scan_backend(device: torch.device) -> str:
    """The backend used for tensors on ``device``: ``LAMAMBA_SCAN_BACKEND`` (auto|reference|triton)."""
    wanted = os.environ.get(BACKEND_ENV, "auto").lower()
    if wanted not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={wanted!r} is not one of {BACKENDS}")
    if wanted == "reference":
        return "reference"
    if wanted == "triton":
        if not _triton_available():
            raise RuntimeError(f"{BACKEND_ENV}=triton but the Triton kernels cannot be imported")
        return "triton"
    return "triton" if device.type == "cuda" and _triton_available() else "reference"


@functools.lru_cache(maxsize=None)
def _log_backend_once(device_type: str, backend: str) -> None:
    logger.info("selective scan backend on %s: %s", device_type, backend)


# ------------------------------------------------------------------------------------------------
#                                 Pure-PyTorch reference
# ------------------------------------------------------------------------------------------------

def _linear_recurrence(a: Tensor, b: Tensor, reverse: bool = False) -> Tensor:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` (h_{-1} = 0) along the last axis; with ``reverse``, of
    ``h_t = a_t * h_{t+1} + b_t`` (h_L = 0), the recurrence run from the end.

    Hillis-Steele parallel scan: after the step with offset ``k`` every position holds the composition of
    the ``2k`` nearest affine maps on its side, so ``ceil(log2 L)`` element-wise steps (no Python loop over
    tokens) give every state. Only products of decays ``a`` in (0, 1] appear: no overflow. Not differentiable
    itself (it works in place on copies of its inputs): :class:`_Recurrence` carries the gradients.
    """
    L = a.shape[-1]
    h, a = b.clone(), a.clone() if L > 2 else a                 # updated in place below; the inputs stay
    k = 1
    while k < L:
        # every position takes the state k steps back (forward) or ahead (reverse); nearer the edge, h = 0
        # before the start, so those positions keep their value (each product is formed before it is added)
        near, far = (slice(None, L - k), slice(k, None)) if reverse else (slice(k, None), slice(None, L - k))
        h[..., near] += a[..., near] * h[..., far]
        if 2 * k < L:                                        # the decays are not needed after the last step
            a[..., near] = a[..., near] * a[..., far]
        k *= 2
    return h


class _Recurrence(torch.autograd.Function):
    """``_linear_recurrence`` with its analytic backward: the adjoint ``g_t = dh_t + a_{t+1} g_{t+1}`` is the
    same recurrence run from the end, then ``db = g`` and ``da_t = g_t h_{t-1}``. Keeps ``a`` and ``h`` only,
    where autograd through the scan's log2(L) steps kept every step's operands and differentiated each (on
    the CPU demo the scan's backward was a third of a training step)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        h = _linear_recurrence(a, b)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, dh: Tensor) -> tuple[Tensor, Tensor]:
        a, h = ctx.saved_tensors
        g = _linear_recurrence(F.pad(a[..., 1:], (0, 1)), dh, reverse=True)      # a_{t+1}; none after the end
        return g * F.pad(h[..., :-1], (1, 0)), g                                  # h_{t-1}; h_{-1} = 0


def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                             D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                             delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                             ) -> tuple[Tensor, Tensor]:
    """Reference selective scan on normalised shapes (B, C grouped 4-D). Returns (out, last_state).

    Differentiable with ordinary autograd; computes in float32 (float64 if the inputs are float64)
    and returns ``out`` in ``u``'s dtype and ``last_state`` (batch, channels, state) in float32/64.
    """
    dtype = torch.promote_types(u.dtype, torch.float32)
    batch, channels, L = u.shape
    u_, delta_ = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        delta_ = delta_ + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta_ = F.softplus(delta_)
    G, N = B.shape[1], A.shape[1]
    # channels are grouped (batch, G, channels/G): B and C broadcast over their group without copies
    shape = (batch, G, channels // G, 1, L)
    dA = delta_.view(shape) * A.to(dtype).view(1, G, channels // G, N, 1)               # (b, G, d/G, N, L)
    dBu = (delta_ * u_).view(shape) * B.to(dtype).unsqueeze(2)                          # (b, G, d/G, N, L)
    h = _Recurrence.apply(torch.exp(dA), dBu)
    y = (h * C.to(dtype).unsqueeze(2)).sum(3).view(batch, channels, L)                 # (b, d, L)
    last = h[..., -1].reshape(batch, channels, N)
    if D is not None:
        y = y + u_ * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype), last


# ------------------------------------------------------------------------------------------------
#                 Custom op: one opaque node for compile, FLOP counting and meta tensors
# ------------------------------------------------------------------------------------------------

def _scan_fwd_impl(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
              z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool
              ) -> tuple[Tensor, Tensor]:
    backend = scan_backend(u.device)
    _log_backend_once(u.device.type, backend)
    if backend == "triton":
        from lamamba.ops import triton_scan
        return triton_scan.selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    with torch.no_grad():
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


_scan_fwd = torch.library.custom_op("lamamba::selective_scan_fwd", _scan_fwd_impl, mutates_args=())


def _precompile(launcher: str, *args) -> None:
    """From a fake kernel: ``triton_scan.<launcher>``'s kernels compiled in the background when the Triton route
    will run (``lamamba.ops.triton_launch.precompile``)."""
    if scan_backend(args[0].device) == "triton":
        from lamamba.ops import triton_scan
        precompile(getattr(triton_scan, launcher), *args)


@_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    _precompile("selective_scan_fwd", u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    dtype = torch.promote_types(u.dtype, torch.float32)
    return u.new_empty(u.shape), u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=dtype)


@torch.library.custom_op("lamamba::selective_scan_bwd", mutates_args=())
def _scan_bwd(dout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
              D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
              delta_softplus: bool) -> list[Tensor]:
    """Triton gradients w.r.t. (u, delta, A, B, C, D, z, delta_bias); absent optionals give empty tensors."""
    from lamamba.ops import triton_scan
    return triton_scan.selective_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus)


@_scan_bwd.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    _precompile("selective_scan_bwd", dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return [u.new_empty(0) if x is None else torch.empty_like(x) for x in (u, delta, A, B, C, D, z, delta_bias)]


def _reference_bwd(dout: Tensor, *inputs: Optional[Tensor], delta_softplus: bool) -> list[Optional[Tensor]]:
    """Reference gradients: recompute the forward under autograd (outside the op, where autograd runs)."""
    leaves = [None if x is None else x.detach().requires_grad_(True) for x in inputs]
    with torch.enable_grad():
        out, _ = selective_scan_reference(*leaves, delta_softplus=delta_softplus)
        present = [x for x in leaves if x is not None]
        grads = iter(torch.autograd.grad(out, present, dout, allow_unused=True))  # L = 1: A is unused
    return [None if x is None else _zero_if_none(next(grads), x) for x in leaves]


def _zero_if_none(grad: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _setup_context(ctx, inputs, output):
    ctx.delta_softplus = inputs[-1]
    ctx.save_for_backward(*inputs[:-1])
    ctx.present = [x is not None for x in inputs[:-1]]


def _backward(ctx, dout, dlast):
    saved = ctx.saved_tensors
    if scan_backend(dout.device) == "triton":
        grads = _scan_bwd(dout.contiguous(), *saved, ctx.delta_softplus)
        grads = [g if p else None for g, p in zip(grads, ctx.present)]
    else:
        grads = _reference_bwd(dout, *saved, delta_softplus=ctx.delta_softplus)
    return (*grads, None)


_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------
#                                      Public API
# ------------------------------------------------------------------------------------------------

def _normalise_bc(X: Tensor, name: str, batch: int, channels: int, L: int) -> Tensor:
    if X.dim() == 2:  # (channels, N): time-invariant, one "group" per channel
        if X.shape[0] != channels:
            raise ValueError(f"{name} of shape {tuple(X.shape)} must be (channels={channels}, state)")
        return X[None, :, :, None].expand(batch, channels, X.shape[1], L)
    if X.dim() == 3:
        X = X.unsqueeze(1)
    if X.dim() != 4 or X.shape[0] != batch or X.shape[-1] != L or channels % X.shape[1] != 0:
        raise ValueError(f"{name} of shape {tuple(X.shape)} must be (batch={batch}, groups, state, "
                         f"length={L}) with groups dividing channels={channels}")
    return X


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False, return_last_state: bool = False):
    """Selective scan with mamba-ssm's ``selective_scan_fn`` signature and semantics (see module doc).

    Returns ``out`` (batch, channels, length) in ``u``'s dtype, and with ``return_last_state`` also the
    final state (batch, channels, state) in float32. Differentiable in every tensor argument.
    The backend (Triton on CUDA, the PyTorch reference elsewhere) follows ``LAMAMBA_SCAN_BACKEND``.
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, channels, length); got {tuple(u.shape)} "
                         f"and {tuple(delta.shape)}")
    batch, channels, L = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, state); got {tuple(A.shape)}")
    B = _normalise_bc(B, "B", batch, channels, L)
    C = _normalise_bc(C, "C", batch, channels, L)
    if B.shape[2] != A.shape[1] or C.shape[2] != A.shape[1]:
        raise ValueError(f"B and C state size must equal A's ({A.shape[1]})")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and v.shape != (channels,):
            raise ValueError(f"{name} must be (channels={channels},); got {tuple(v.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}; got {tuple(z.shape)}")
    args = (u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(), D,
            None if z is None else z.contiguous(), delta_bias, bool(delta_softplus))
    needs_grad = grad_needed(*args[:8])
    if needs_grad and u.device.type != "meta" and scan_backend(u.device) == "reference":
        # eager training on the reference: plain autograd keeps the forward's intermediates instead of
        # recomputing them in the op's backward (a third less work per step on CPUs)
        out, last = selective_scan_reference(*args[:8], delta_softplus=args[8])
    else:
        out, last = _scan_fwd(*args)
    return (out, last) if return_last_state else out
