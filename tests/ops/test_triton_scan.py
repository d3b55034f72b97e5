"""Triton selective-scan kernels against naive recurrences and the PyTorch references.

CPU tests run the kernels through Triton's interpreter. Triton fixes "compile or interpret" when it is
first imported, so this module asks for the interpreter (TRITON_INTERPRET=1) only when no CUDA device is
present and triton is not imported yet; in any other process state the CPU tests skip with the reason
(run them alone, ``TRITON_INTERPRET=1 pytest tests/ops/test_triton_scan.py``) and the GPU tests (marker
``gpu``, real model shapes) run compiled kernels.
"""
import dataclasses
import os
import sys

import pytest
import torch
import torch.nn.functional as F

if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from triton.runtime.jit import JITFunction  # noqa: E402

from lamamba.ops import selective_scan, selective_scan_reference, triton_scan, triton_scan_kernels  # noqa: E402
from lamamba.ops.scan_paths import scan_paths  # noqa: E402
from lamamba.ops.ss2d_scan import ss2d_selective_scan, ss2d_selective_scan_reference  # noqa: E402

INTERPRETED = not isinstance(triton_scan_kernels.scan_fwd_kernel, JITFunction) \
    and not isinstance(triton.language.sigmoid, JITFunction)
interpreter = pytest.mark.skipif(not INTERPRETED, reason="triton was imported without TRITON_INTERPRET=1 in this "
                                 "process; run this file alone on a CPU machine or with TRITON_INTERPRET=1")


def gpu(test):
    """Marker ``gpu``, skipped without CUDA or when this process interprets Triton."""
    needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED,
                                    reason="needs CUDA and compiled (not interpreted) Triton")
    return pytest.mark.gpu(needs_cuda(test))


MAMBA_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
SS2D_NAMES = ("x", "delta", "A", "B", "C", "D", "delta_bias")


def rel_err(a, b):
    """Max-norm relative error, computed in float64."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


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
#                                   Fused SS2D scan
# ------------------------------------------------------------------------------------------------

def ss2d_inputs(batch, H, W, d, N, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    L, K = H * W, 4
    inp = dict(x=r(batch, L, d), delta=r(batch, L, K, d),
               A=-torch.rand(K * d, N, generator=g, dtype=torch.float64) - 0.1, B=r(batch, L, K, N),
               C=r(batch, L, K, N), D=r(K * d), delta_bias=r(K * d) * 0.1)
    return {k: v.to(dtype) for k, v in inp.items()}


def check_ss2d(inp, H, W, tol, grad_tol=None):
    """Triton y and gradients against the reference evaluated in float64 on the same (rounded) inputs."""
    paths, inverse = scan_paths(H, W)
    leaves = [inp[k].clone().requires_grad_(True) for k in SS2D_NAMES]
    y = triton_scan.ss2d_selective_scan(*leaves, paths, inverse)
    assert y.dtype == torch.promote_types(inp["x"].dtype, torch.float32)
    ref_leaves = [inp[k].double().requires_grad_(True) for k in SS2D_NAMES]
    ref = ss2d_selective_scan_reference(*ref_leaves, paths, inverse)
    assert rel_err(y, ref) < tol
    dy = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(y, leaves, dy.to(y.dtype))
    ref_grads = torch.autograd.grad(ref, ref_leaves, dy)
    for name, a, g, r in zip(SS2D_NAMES, leaves, grads, ref_grads):
        assert g.shape == a.shape and g.dtype == a.dtype, name
        assert rel_err(g, r) < (grad_tol or tol), name


@interpreter
@pytest.mark.parametrize("H,W,d,N", [(4, 4, 3, 1), (3, 5, 2, 3), (2, 3, 2, 16)])
def test_ss2d_float64_matches_reference(H, W, d, N):
    check_ss2d(ss2d_inputs(2, H, W, d, N), H, W, tol=1e-10)


@interpreter
def test_ss2d_several_channel_blocks_and_a_long_non_square_map(launch):
    launch(max_block_d=2, min_block_d=1)                 # d = 5: three channel blocks per batch element
    check_ss2d(ss2d_inputs(1, 7, 5, 5, 2), 7, 5, tol=1e-10)   # L = 35: three tiles of 16 steps


@interpreter
def test_ss2d_float32_and_bfloat16():
    check_ss2d(ss2d_inputs(1, 5, 3, 3, 1, dtype=torch.float32), 5, 3, tol=1e-5)
    inp = ss2d_inputs(1, 3, 4, 3, 2, dtype=torch.float32)
    inp.update({k: inp[k].bfloat16() for k in ("x", "delta", "B", "C")})
    check_ss2d(inp, 3, 4, tol=1e-5, grad_tol=2e-2)       # y stays float32; bf16 gradients are rounded


@interpreter
def test_ss2d_dispatch_and_states_only_when_differentiating(monkeypatch):
    monkeypatch.setenv("LAMAMBA_SCAN_BACKEND", "triton")
    inp = ss2d_inputs(1, 2, 4, 2, 1)
    paths, inverse = scan_paths(2, 4)
    args = [inp[k] for k in SS2D_NAMES]
    ref = ss2d_selective_scan_reference(*args, paths, inverse)
    torch.testing.assert_close(ss2d_selective_scan(*args, paths, inverse), ref)
    y, states = torch.ops.lamamba.ss2d_scan_fwd(*args, paths, False)
    assert states.numel() == 0
    torch.testing.assert_close(y, ref)


@interpreter
def test_ss2d_custom_ops_pass_opcheck_and_compile_to_one_graph():
    inp = ss2d_inputs(1, 2, 4, 2, 1, dtype=torch.float32)
    paths, inverse = scan_paths(2, 4)
    args = [inp[k].requires_grad_(True) for k in SS2D_NAMES]
    torch.library.opcheck(torch.ops.lamamba.ss2d_scan_fwd.default, (*args, paths, True))
    y, states = torch.ops.lamamba.ss2d_scan_fwd(*[a.detach() for a in args], paths, True)
    torch.library.opcheck(torch.ops.lamamba.ss2d_scan_bwd.default,
                          (torch.randn_like(y), *[a.detach() for a in args], paths, states))
    fn = lambda *a: triton_scan.ss2d_selective_scan(*a, paths, inverse).square().sum()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")   # fullgraph: no graph break
    loss, ref = compiled(*args), fn(*args)
    # dB/dC accumulate with atomics, so runs agree to rounding, not bit for bit
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(loss, args), torch.autograd.grad(ref, args), rtol=1e-4, atol=1e-4)


def test_ss2d_meta_tensors_give_shapes():
    inp = {k: v.to("meta") for k, v in ss2d_inputs(2, 4, 6, 3, 2).items()}
    paths, inverse = scan_paths(4, 6, "meta")
    y = triton_scan.ss2d_selective_scan(*[inp[k] for k in SS2D_NAMES], paths, inverse)
    assert y.shape == (2, 24, 3) and y.dtype == torch.float64


@pytest.mark.parametrize("name,shape,msg", [
    ("delta", (2, 16, 4, 4), "delta must have shape"),
    ("A", (11, 2), "A must have shape"),
    ("B", (2, 16, 3, 2), "B must have shape"),
    ("x", (2, 16), "x must be"),
])
def test_ss2d_clear_errors(name, shape, msg):
    inp = ss2d_inputs(2, 4, 4, 3, 2)
    inp[name] = torch.zeros(shape, dtype=torch.float64)
    paths, inverse = scan_paths(4, 4)
    with pytest.raises(ValueError, match=msg):
        triton_scan.ss2d_selective_scan(*[inp[k] for k in SS2D_NAMES], paths, inverse)


# ------------------------------------------------------------------------------------------------
#                              GPU: model shapes, compiled kernels
# ------------------------------------------------------------------------------------------------

def _gpu(inp, dtype_of):
    return {k: v.to("cuda", dtype_of(k)) for k, v in inp.items()}


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N,d", [(1, 640), (16, 128)])
def test_gpu_ss2d_model_shape(dtype, N, d):
    H = W = 32                                             # XL stage 1 at 256 px: L = 1024, d = 640 (N = 1)
    inp = ss2d_inputs(2, H, W, d, N, dtype=torch.float32)
    inp = _gpu(inp, lambda k: dtype if k in ("x", "delta", "B", "C") else torch.float32)
    paths, inverse = scan_paths(H, W, "cuda")
    leaves = [inp[k].requires_grad_(True) for k in SS2D_NAMES]
    y = triton_scan.ss2d_selective_scan(*leaves, paths, inverse)
    ref_leaves = [inp[k].detach().double().requires_grad_(True) for k in SS2D_NAMES]
    ref = ss2d_selective_scan_reference(*ref_leaves, paths, inverse)
    assert rel_err(y, ref) < 1e-4
    dy = torch.randn_like(ref)
    for name, g, r in zip(SS2D_NAMES, torch.autograd.grad(y, leaves, dy.float()),
                          torch.autograd.grad(ref, ref_leaves, dy)):
        assert rel_err(g, r) < (1e-4 if g.dtype == torch.float32 else 2e-2), name


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


@gpu
def test_gpu_ss2d_compiles_without_graph_breaks():
    inp = _gpu(ss2d_inputs(2, 16, 16, 128, 1, dtype=torch.float32), lambda k: torch.float32)
    paths, inverse = scan_paths(16, 16, "cuda")
    args = [inp[k].requires_grad_(True) for k in SS2D_NAMES]
    fn = lambda *a: triton_scan.ss2d_selective_scan(*a, paths, inverse).square().sum()
    compiled = torch.compile(fn, fullgraph=True)
    loss, ref = compiled(*args), fn(*args)
    # dB/dC accumulate with atomics, so runs agree to rounding, not bit for bit
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(loss, args), torch.autograd.grad(ref, args), rtol=1e-4, atol=1e-4)
