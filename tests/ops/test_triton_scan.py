"""Triton Mamba-layout selective-scan kernels against naive recurrences and the PyTorch reference
(interpreted on CPU machines, compiled on GPU machines: ``triton_env``). SS2D's kernels: test_triton_ss2d.py."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from triton_env import gpu, interpreter, rel_err

from lamamba.ops import selective_scan, selective_scan_reference, triton_scan

MAMBA_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture
def launch(monkeypatch):
    """Override launch parameters (e.g. tiny channel blocks, to exercise the atomic dB/dC path)."""
    def override(**kw):
        monkeypatch.setattr(triton_scan, "LAUNCH", dataclasses.replace(triton_scan.LAUNCH, **kw))
    return override


# ------------------------------------------------------------------------------------------------
#                                   Mamba layout
# ------------------------------------------------------------------------------------------------

def naive_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Token-by-token recurrence from the definition; B, C (batch, groups, N, L)."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    per_group = u.shape[1] // B.shape[1]
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        Bt, Ct = (X[..., t].repeat_interleave(per_group, 1) for X in (B, C))   # (batch, channels, N)
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * Bt * u[:, :, t, None]
        ys.append((h * Ct).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y, h


def mamba_inputs(batch, channels, groups, N, L, dtype=torch.float64, optionals=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    inp = dict(u=r(batch, channels, L), delta=r(batch, channels, L) * 0.5,
               A=-torch.rand(channels, N, generator=g, dtype=torch.float64) * 2 - 0.1,
               B=r(batch, groups, N, L), C=r(batch, groups, N, L), D=r(channels), z=r(batch, channels, L),
               delta_bias=r(channels) * 0.1)
    if not optionals:
        inp.update(D=None, z=None, delta_bias=None)
    return {k: None if v is None else v.to(dtype) for k, v in inp.items()}


def check_mamba(inp, softplus, tol, truth=naive_scan):
    """Triton forward/backward against ``truth`` evaluated in float64 on the same (rounded) inputs."""
    args = [inp[k] for k in MAMBA_NAMES]
    out, last = triton_scan.selective_scan_fwd(*args, softplus)
    assert out.dtype == inp["u"].dtype and last.dtype == torch.promote_types(inp["u"].dtype, torch.float32)
    leaves = [None if a is None else a.double().requires_grad_(True) for a in args]
    ref, ref_last = truth(*leaves, softplus)
    assert rel_err(out, ref) < tol and rel_err(last, ref_last) < tol
    dout = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    present = [a for a in leaves if a is not None]
    ref_grads = iter(torch.autograd.grad(ref, present, dout))
    grads = triton_scan.selective_scan_bwd(dout.to(out.dtype), *args, softplus)
    for name, a, g in zip(MAMBA_NAMES, args, grads):
        if a is None:
            assert g.numel() == 0, name
            continue
        assert g.shape == a.shape and g.dtype == a.dtype, name
        assert rel_err(g, next(ref_grads)) < tol, name


@interpreter
@pytest.mark.parametrize("batch,channels,groups,N,L,softplus,optionals", [
    (2, 4, 1, 1, 70, True, True),
    (1, 4, 2, 3, 37, False, False),
    (1, 2, 1, 16, 37, True, True),
])
def test_mamba_float64_matches_naive(batch, channels, groups, N, L, softplus, optionals):
    inp = mamba_inputs(batch, channels, groups, N, L, optionals=optionals)
    if not softplus:
        inp["delta"] = inp["delta"].abs()
    check_mamba(inp, softplus, tol=1e-10)


@interpreter
def test_mamba_several_channel_blocks_add_dB_dC_atomically(launch):
    launch(max_block_d=2, min_block_d=1)                 # 3 channels per group -> 2 blocks per group
    check_mamba(mamba_inputs(1, 6, 2, 2, 20), softplus=True, tol=1e-10)


@interpreter
def test_mamba_float32_and_bfloat16():
    check_mamba(mamba_inputs(1, 4, 1, 3, 37, dtype=torch.float32), softplus=True, tol=1e-5,
                truth=lambda *a: selective_scan_reference(*a[:-1], delta_softplus=a[-1]))
    inp = mamba_inputs(1, 4, 1, 2, 21, dtype=torch.float32)
    inp.update({k: inp[k].bfloat16() for k in ("u", "delta", "z", "B", "C")})
    check_mamba(inp, softplus=True, tol=2e-2)            # bf16 output and gradients: bf16 rounding


@interpreter
def test_public_selective_scan_dispatches_to_triton(monkeypatch):
    monkeypatch.setenv("LAMAMBA_SCAN_BACKEND", "triton")
    inp = {k: v.requires_grad_(True) for k, v in mamba_inputs(1, 4, 2, 2, 19).items()}
    out, last = selective_scan(**inp, delta_softplus=True, return_last_state=True)
    ref, ref_last = naive_scan(*[inp[k] for k in MAMBA_NAMES], True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(last, ref_last)
    grads = torch.autograd.grad(out.sum(), list(inp.values()))
    ref_grads = torch.autograd.grad(ref.sum(), list(inp.values()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


# ------------------------------------------------------------------------------------------------
#                              GPU: model shapes, compiled kernels
# ------------------------------------------------------------------------------------------------

def _gpu(inp, dtype_of):
    return {k: v.to("cuda", dtype_of(k)) for k, v in inp.items()}


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_mamba_model_shape(dtype):
    inp = mamba_inputs(2, 512, 1, 16, 1000, dtype=torch.float32)
    inp = _gpu(inp, lambda k: dtype if k in ("u", "delta", "z") else torch.float32)
    args = [inp[k] for k in MAMBA_NAMES]
    out, last = triton_scan.selective_scan_fwd(*args, True)
    ref_leaves = [a.double().requires_grad_(True) for a in args]
    ref, ref_last = selective_scan_reference(*ref_leaves, delta_softplus=True)
    assert rel_err(out, ref) < (1e-4 if dtype == torch.float32 else 2e-2) and rel_err(last, ref_last) < 1e-4
    dout = torch.randn_like(ref).to(dtype).double()         # both sides see the same (rounded) dout
    grads = triton_scan.selective_scan_bwd(dout.to(dtype).contiguous(), *args, True)
    for name, g, r in zip(MAMBA_NAMES, grads, torch.autograd.grad(ref, ref_leaves, dout)):
        assert rel_err(g, r) < (1e-4 if g.dtype == torch.float32 else 2e-2), name
