"""The fused gated residual + LayerNorm + AdaLN op (``lamamba.ops.fused_adaln``) against a naive float64
implementation written here: values and every gradient, with and without the residual branch.

The Triton route runs interpreted on CPU machines (``LAMAMBA_SCAN_BACKEND=triton``), compiled on GPUs.
"""
import pytest
import torch
from triton_env import gpu, interpreter, rel_err

from lamamba.ops import triton_adaln
from lamamba.ops.fused_adaln import add_norm_modulate, add_norm_modulate_reference


def naive(x, branch, gate, w, b, shift, scale, eps):
    """Row by row: h = x + gate * branch; LayerNorm with the biased variance; then (1 + scale), + shift."""
    N, D = x.shape[0], x.shape[-1]
    xs = x.reshape(N, -1, D)
    h = xs if branch is None else xs + gate.reshape(N, 1, D) * branch.reshape(N, -1, D)
    mu = h.sum(-1, keepdim=True) / D
    var = ((h - mu) ** 2).sum(-1, keepdim=True) / D
    y = (h - mu) / torch.sqrt(var + eps) * w + b
    out = y * (1 + scale.reshape(N, 1, D)) + shift.reshape(N, 1, D)
    return h.reshape(x.shape), out.reshape(x.shape)


def inputs(N, H, W, D, residual, dtype=torch.float64, seed=0, mod_shape="flat"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)
    mod = r(N, (3 if residual else 2) * D) * 0.5        # slices of one AdaLN output, as in the block
    if mod_shape == "block":
        mod = mod.view(N, 1, 1, -1)
    chunks = list(mod.chunk(3 if residual else 2, dim=-1))
    x = r(N, H, W, D) * 2 + 1
    branch = r(N, H, W, D) if residual else None
    return dict(x=x, branch=branch, gate=chunks[2] if residual else None, weight=1 + 0.1 * r(D).float().to(dtype),
                bias=0.1 * r(D).float().to(dtype), shift=chunks[0], scale=chunks[1])


def run(fn, inp, eps=1e-5):
    leaves = {k: (v.detach().clone().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    x_out, out = fn(leaves["x"], leaves["branch"], leaves["gate"], leaves["weight"], leaves["bias"],
                    leaves["shift"], leaves["scale"], eps)
    g = torch.Generator().manual_seed(1)
    d_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    d_res = torch.randn(x_out.shape, generator=g, dtype=torch.float64).to(x_out.dtype)
    names = [k for k, v in leaves.items() if v is not None]
    loss = (out.double() * d_out.double()).sum() + (x_out.double() * d_res.double()).sum()
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return x_out, out, dict(zip(names, grads))


def assert_matches_naive(fn, inp):
    """``fn``'s outputs (residual and modulated) and every gradient equal the naive implementation's."""
    x_out, out, grads = run(fn, inp)
    ref_x, ref_out, ref_grads = run(naive, inp)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(x_out, ref_x)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert grads[k].shape == inp[k].shape, k
        torch.testing.assert_close(grads[k], ref_grads[k], msg=k)


@pytest.fixture
def triton_route(monkeypatch):
    monkeypatch.setenv("LAMAMBA_SCAN_BACKEND", "triton")


@interpreter
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("N,H,W,D,mod_shape", [(2, 3, 5, 24, "flat"), (3, 4, 4, 16, "block"), (1, 7, 1, 40, "flat")])
def test_matches_naive_float64(triton_route, residual, N, H, W, D, mod_shape):
    assert_matches_naive(add_norm_modulate, inputs(N, H, W, D, residual, mod_shape=mod_shape))


@interpreter
@pytest.mark.parametrize("row_target,tile_elements", [(64, 4096), (1, 32), (3, 48)])
def test_many_row_blocks(triton_route, monkeypatch, row_target, tile_elements):
    """Several programs per sample (partial gradient sums added on the host), several tiles per program, rows
    not a multiple of the tile."""
    launch = triton_adaln.AdaLNLaunch(tile_elements=tile_elements, row_target=row_target)
    monkeypatch.setattr(triton_adaln, "FORWARD", launch)
    monkeypatch.setattr(triton_adaln, "BACKWARD", launch)
    assert_matches_naive(add_norm_modulate, inputs(2, 5, 7, 12, True))


@interpreter
def test_low_precision_and_dtypes(triton_route):
    """bf16 activations with float32 parameters: the output dtypes of the unfused code, values within rounding."""
    inp = inputs(2, 4, 4, 32, True, dtype=torch.bfloat16)
    inp["weight"], inp["bias"] = inp["weight"].float(), inp["bias"].float()
    inp["x"] = inp["x"].float()                                    # the residual stream stays float32
    x_out, out = add_norm_modulate(*inp.values())
    ref_x, ref_out = add_norm_modulate_reference(*inp.values())
    assert (x_out.dtype, out.dtype) == (ref_x.dtype, ref_out.dtype) == (torch.float32, torch.float32)
    assert rel_err(out, ref_out) < 2e-2 and rel_err(x_out, ref_x) < 1e-2
    _, out16 = add_norm_modulate(*inp.values(), out_dtype=torch.bfloat16)
    assert out16.dtype == torch.bfloat16 and rel_err(out16, ref_out) < 2e-2


def test_reference_route_matches_naive():
    assert_matches_naive(add_norm_modulate_reference, inputs(2, 3, 3, 8, True))


@interpreter
@pytest.mark.parametrize("residual", [True, False])
def test_opcheck(triton_route, residual):
    """Schemas and fake (meta) implementations of the forward and backward custom ops."""
    inp = inputs(2, 2, 3, 8, residual)
    x3 = inp["x"].reshape(2, -1, 8)
    br3 = inp["branch"].reshape(2, -1, 8) if residual else None
    fwd_args = (x3, br3, inp["gate"], inp["weight"], inp["bias"], inp["shift"], inp["scale"], 1e-5, torch.float64,
                torch.float64)
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(triton_adaln._fwd, fwd_args, test_utils=checks)
    x_out, out, mean, rstd = triton_adaln._fwd(*fwd_args)
    bwd_args = (torch.randn_like(out), torch.randn_like(x3) if residual else None, x_out if residual else x3, br3,
                inp["gate"], inp["weight"], inp["bias"], inp["scale"], mean, rstd, torch.float64)
    torch.library.opcheck(triton_adaln._bwd, bwd_args, test_utils=checks)


def test_errors():
    inp = inputs(2, 2, 2, 8, True)
    with pytest.raises(ValueError, match="both branch and gate"):
        add_norm_modulate(inp["x"], inp["branch"], None, inp["weight"], inp["bias"], inp["shift"], inp["scale"])
    with pytest.raises(ValueError, match="one vector of 8 per sample"):
        add_norm_modulate(inp["x"], None, None, inp["weight"], inp["bias"], inp["shift"][:1], inp["scale"])
    with pytest.raises(ValueError, match="x's shape"):
        add_norm_modulate(inp["x"], inp["branch"][:1], inp["gate"], inp["weight"], inp["bias"], inp["shift"],
                          inp["scale"])


@gpu
@pytest.mark.parametrize("D", [96, 384, 768])
def test_gpu_bf16_model_shapes(D):
    """Compiled Triton vs the reference at XL-like shapes in the block's dtypes (fp32 stream, bf16 branch)."""
    torch.manual_seed(0)
    N, H, W = 8, 32, 32
    mod = torch.randn(N, 3 * D, device="cuda", dtype=torch.bfloat16) * 0.5
    shift, scale, gate = mod.chunk(3, -1)
    x = torch.randn(N, H, W, D, device="cuda")
    branch = torch.randn(N, H, W, D, device="cuda", dtype=torch.bfloat16)
    w, b = 1 + 0.1 * torch.randn(D, device="cuda"), 0.1 * torch.randn(D, device="cuda")
    leaves = [t.clone().requires_grad_(True) for t in (x, branch, gate, w, b, shift, scale)]
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, branch, gate, w, b, shift, scale)]
    xo, out = add_norm_modulate(*leaves, out_dtype=torch.bfloat16)
    rxo, rout = add_norm_modulate_reference(*ref_leaves)
    assert rel_err(xo, rxo) < 1e-2 and rel_err(out, rout) < 2e-2
    g = torch.randn_like(rout)
    gr = torch.autograd.grad((out.float() * g).sum() + xo.sum(), leaves)
    rg = torch.autograd.grad((rout * g).sum() + rxo.sum(), ref_leaves)
    for name, a, r in zip(("x", "branch", "gate", "w", "b", "shift", "scale"), gr, rg):
        assert rel_err(a, r) < 3e-2, name


@interpreter
def test_compiles_without_graph_breaks(triton_route):
    """torch.compile traces the custom op (one opaque node), forward and backward; eager uses the same kernels."""
    torch._dynamo.reset()
    compiled = torch.compile(add_norm_modulate, fullgraph=True, backend="aot_eager")
    assert_matches_naive(compiled, inputs(2, 3, 4, 8, True))


@interpreter
@pytest.mark.parametrize("residual", [True, False])
def test_partial_sums_kernel_reduces_every_group_in_its_dtype(residual):
    """The backward's one reduction launch: per-sample sums over the row blocks (shift, scale, gate) and sums
    over everything (w, b), with several column blocks and several loop iterations of both kinds."""
    from lamamba.ops import triton_adaln_kernels as kernels

    N, n_pb, D = 3, 40, 70
    part = torch.randn(5 if residual else 4, N, n_pb, D, generator=torch.Generator().manual_seed(0))
    dw, db = torch.empty(D), torch.empty(D)
    dshift, dscale = torch.empty(N, D), torch.empty(N, D, dtype=torch.bfloat16)
    dgate = torch.empty(N, D, dtype=torch.float64) if residual else dscale
    kernels.adaln_partial_sums_kernel[(-(-D // 32), N + 1)](part, dw, db, dshift, dscale, dgate, N, n_pb, D,
                                                             HAS_RESIDUAL=residual, BLOCK_P=32, BLOCK_D=32)
    torch.testing.assert_close(dw, part[0].sum((0, 1)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(db, part[1].sum((0, 1)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dshift, part[2].sum(1), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dscale, part[3].sum(1).bfloat16())
    if residual:
        torch.testing.assert_close(dgate, part[4].sum(1).double(), rtol=1e-5, atol=1e-4)
