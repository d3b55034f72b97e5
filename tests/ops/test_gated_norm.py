"""SS2D's fused output stage (``lamamba.ops.gated_norm``): direction sum, LayerNorm, SiLU gate.

Both routes (Triton kernels, interpreted on CPU machines; the PyTorch reference) against a naive float64
implementation written here, values and every gradient; the custom ops under ``opcheck`` and ``torch.compile``;
SS2D itself on both routes; compiled kernels at model sizes on GPU machines (``triton_env``).
"""
import dataclasses

import pytest
import torch
from triton_env import gpu, interpreter, rel_err

from lamamba.ops import gated_norm as gn
from lamamba.ops.gated_norm import gated_norm, gated_norm_reference


def naive(ys, z, weight, bias, eps=1e-5):
    """Float64, one direction at a time, the moments spelled out."""
    ys, z, weight, bias = ys.double(), z.double(), weight.double(), bias.double()
    s = ys[:, :, 0]
    for k in range(1, ys.shape[2]):
        s = s + ys[:, :, k]
    mean = s.mean(-1, keepdim=True)
    var = ((s - mean) ** 2).mean(-1, keepdim=True)
    y = (s - mean) / torch.sqrt(var + eps) * weight + bias
    return y * z / (1 + torch.exp(-z))


def inputs(N, L, d, dtype, K=4, seed=0, device="cpu"):
    """ys (N, L, K, d); z a strided half of a (N, L, 2d) projection, as SS2D's chunk gives it; fp32 weight/bias.
    Returns the leaves to differentiate (ys, the projection, weight, bias) and z."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    ys = (r(N, L, K, d) + 0.5).to(device, dtype).requires_grad_(True)   # nonzero mean: the centring matters
    proj = (2 * r(N, L, 2 * d)).to(device, dtype).requires_grad_(True)
    w = (1 + 0.3 * r(d)).to(device, torch.float64 if dtype == torch.float64 else torch.float32)
    b = (0.3 * r(d)).to(w).requires_grad_(True)
    return [ys, proj, w.requires_grad_(True), b], proj.chunk(2, dim=-1)[1]


@pytest.fixture
def route(monkeypatch):
    def use(name):
        monkeypatch.setenv("LAMAMBA_SCAN_BACKEND", name)
    return use


@pytest.fixture
def launch(monkeypatch):
    """Small row blocks and a small backward grid: several blocks per program, a partial last block."""
    def override(tile, **kw):
        monkeypatch.setattr(gn, "LAUNCH", dataclasses.replace(gn.LAUNCH, tile_elems=tile, bwd_tile_elems=tile, **kw))
    return override


def check(leaves, z, tol, grad_tol, out_dtype=None):
    ys, proj, w, b = leaves
    out = gated_norm(ys, z, w, b, out_dtype=out_dtype)
    assert out.shape == z.shape and out.dtype == (out_dtype or z.dtype)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    ref = naive(ref_leaves[0], ref_leaves[1].chunk(2, dim=-1)[1], *ref_leaves[2:])
    assert rel_err(out, ref) < tol
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(out, leaves, dout.to(out))
    ref_grads = torch.autograd.grad(ref, ref_leaves, dout.to(out).double())
    for name, leaf, g, r in zip(("ys", "z", "weight", "bias"), leaves, grads, ref_grads):
        assert g.shape == leaf.shape and g.dtype == leaf.dtype, name
        assert rel_err(g, r) < grad_tol, name
    return grads


# ------------------------------------------------------------------------------------------------
#                          Both routes against the naive implementation
# ------------------------------------------------------------------------------------------------

CASES = [(2, 9, 24), (1, 5, 192), (3, 6, 7)]           # N * L = 18, 5, 18 rows; d not powers of two


@interpreter
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("N,L,d", CASES)
def test_float64(route, launch, backend, N, L, d):
    route(backend)
    launch(128, bwd_programs_per_sm=3, bwd_num_stages=2)  # d = 24: 4-row blocks, 5 blocks over 3 programs
    check(*inputs(N, L, d, torch.float64), tol=1e-12, grad_tol=1e-12)


@interpreter
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_float32_and_bfloat16(route, launch, backend):
    route(backend)
    launch(128, bwd_programs_per_sm=2)
    check(*inputs(2, 9, 24, torch.float32), tol=1e-5, grad_tol=1e-5)
    check(*inputs(1, 7, 192, torch.float32, K=3), tol=1e-5, grad_tol=1e-5)    # K is not fixed at 4
    # bf16 inputs: statistics and gate in fp32, one rounding of the bf16 output and gradients
    check(*inputs(2, 9, 24, torch.bfloat16), tol=1e-2, grad_tol=1e-2)
    # SS2D under autocast: bf16 ys and z, fp32 output (u's dtype promoted with z's)
    check(*inputs(1, 5, 192, torch.bfloat16), tol=1e-5, grad_tol=1e-2, out_dtype=torch.float32)


@interpreter
def test_direction_gradient_is_one_tensor_expanded(route):
    """The gradient of ys is one (N, L, d) tensor viewed over K with stride 0, as the reference's sum gives."""
    route("triton")
    (ys, proj, w, b), z = inputs(2, 3, 24, torch.float32)
    dys = torch.autograd.grad(gated_norm(ys, z, w, b).square().sum(), ys)[0]
    assert dys.stride(2) == 0 and dys.stride(-1) == 1
    torch.testing.assert_close(dys, torch.autograd.grad(gated_norm_reference(ys, z, w, b).square().sum(), ys)[0])


@interpreter
def test_the_backward_keeps_the_direction_sum_not_the_directions(route):
    """Saved for the backward: the fp32 sum (N * L, d) and the statistics, not ys (N, L, K, d); without gradients
    nothing beyond the statistics is written."""
    route("triton")
    (ys, proj, w, b), z = inputs(2, 3, 24, torch.bfloat16)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = gated_norm(ys, z, w, b)
    shapes = {tuple(t.shape) for t in saved}
    assert (2 * 3, 24) in shapes and tuple(ys.shape) not in shapes
    assert [t.dtype for t in saved if tuple(t.shape) == (2 * 3, 24)] == [torch.float32]
    with torch.no_grad():
        torch.testing.assert_close(gated_norm(ys, z, w, b), out.detach())


@interpreter
def test_ss2d_routes_agree(route):
    """SS2D end to end: the Triton scan and gated norm against the reference route, outputs and gradients."""
    from lamamba.models.lamamba import SS2D
    torch.manual_seed(0)
    op = SS2D(dim=8, d_state=2).double()
    with torch.no_grad():
        op.out_norm.weight.normal_(1, 0.2), op.out_norm.bias.normal_(0, 0.2)
    u = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    results = []
    for backend in ("triton", "reference"):
        route(backend)
        out = op(u)
        results.append((out, torch.autograd.grad(out.square().sum(), [u, *op.parameters()])))
    (out, grads), (ref, ref_grads) = results
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads, ref_grads, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------------
#                                Custom ops, compile, meta, errors
# ------------------------------------------------------------------------------------------------

@interpreter
def test_custom_ops_pass_opcheck_and_compile_to_one_graph(route, launch):
    route("triton")
    launch(64)
    (ys, proj, w, b), z = inputs(2, 3, 12, torch.float32)
    torch.library.opcheck(torch.ops.lamamba.gated_norm_fwd.default, (ys, z, w, b, 1e-5, torch.float32, True))
    with torch.no_grad():  # without the sum: a forward only
        torch.library.opcheck(torch.ops.lamamba.gated_norm_fwd.default, (ys, z, w, b, 1e-5, torch.float32, False))
    with pytest.raises(RuntimeError, match="save_sum=False"):
        torch.ops.lamamba.gated_norm_fwd(ys, z, w, b, 1e-5, torch.float32, False)[0].sum().backward()
    with torch.no_grad():
        out, mean, rstd, total = torch.ops.lamamba.gated_norm_fwd(ys, z, w, b, 1e-5, torch.float32, True)
    torch.testing.assert_close(total, ys.detach().double().sum(2).float().view(-1, ys.shape[-1]))
    args = [t.detach() for t in (torch.randn_like(out), total, z, w, b)]
    torch.library.opcheck(torch.ops.lamamba.gated_norm_bwd.default, (*args, mean, rstd, ys.dtype))
    fn = lambda ys, proj, w, b: gated_norm(ys, proj.chunk(2, -1)[1], w, b).square().sum()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")   # fullgraph: no graph break
    leaves = [ys, proj, w, b]
    loss, ref = compiled(*leaves), fn(*leaves)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, leaves), torch.autograd.grad(ref, leaves))


def test_meta_tensors_give_shapes(route):
    route("triton")
    ys, z = torch.empty(2, 6, 4, 10, device="meta", dtype=torch.bfloat16), torch.empty(2, 6, 20, device="meta")
    w = torch.empty(10, device="meta")
    out = gated_norm(ys, z[..., 10:], w, w, out_dtype=torch.float32)
    assert out.shape == (2, 6, 10) and out.dtype == torch.float32 and out.device.type == "meta"


@pytest.mark.parametrize("ys,z,d", [
    ((2, 6, 4, 10), (2, 6, 12), 10),       # z's channels
    ((2, 6, 4, 10), (2, 5, 10), 10),       # z's length
    ((2, 6, 10), (2, 6, 10), 10),          # ys without the direction axis
    ((2, 6, 4, 10), (2, 6, 10), 8),        # weight and bias
])
def test_bad_shapes_raise_one_clear_error(ys, z, d):
    with pytest.raises(ValueError, match=r"gated_norm: expected ys \(N, L, K, d\), z \(N, L, d\), weight"):
        gated_norm(torch.zeros(ys), torch.zeros(z), torch.ones(d), torch.zeros(d))


def test_launch_plan():
    plan = gn._plan(18, 24)
    assert (plan.block_d, plan.block_r, plan.n_blocks) == (32, 32, 1)     # whole rows; capped by the row count
    big = gn._plan(4096, 1536, backward=True)
    assert (big.block_d, big.block_r, big.n_blocks) == (2048, 1, 4096) and 1 <= big.num_warps <= 8
    assert dataclasses.replace(plan, n_blocks=5).bwd_grid(torch.device("cpu"))[0] <= gn.LAUNCH.bwd_programs_per_sm


# ------------------------------------------------------------------------------------------------
#                                GPU: model sizes, compiled kernels
# ------------------------------------------------------------------------------------------------

@gpu
@pytest.mark.parametrize("N,L,d", [(4, 1024, 384), (4, 1024, 768), (2, 256, 1536), (3, 333, 192)])
def test_gpu_bf16_matches_reference(route, N, L, d):
    """XL-like sizes under SS2D's autocast dtypes (bf16 ys and z, fp32 parameters): Triton vs the reference."""
    leaves, z = inputs(N, L, d, torch.bfloat16, device="cuda")
    for out_dtype in (torch.bfloat16, torch.float32):
        results = []
        for backend in ("triton", "reference"):
            route(backend)
            out = gated_norm(leaves[0], z, leaves[2], leaves[3], out_dtype=out_dtype)
            dout = torch.randn(out.shape, generator=torch.Generator("cuda").manual_seed(1), device="cuda").to(out)
            results.append((out, torch.autograd.grad(out, leaves, dout)))
        (out, grads), (ref, ref_grads) = results
        assert rel_err(out, ref) < (1e-2 if out_dtype == torch.bfloat16 else 1e-5)
        for name, g, r in zip(("ys", "z", "weight", "bias"), grads, ref_grads):
            assert rel_err(g, r) < 2e-2, name


@gpu
def test_gpu_compiles_without_graph_breaks(route):
    route("triton")
    leaves, _ = inputs(2, 256, 384, torch.bfloat16, device="cuda")
    fn = lambda ys, proj, w, b: gated_norm(ys, proj.chunk(2, -1)[1], w, b, out_dtype=torch.float32).square().sum()
    compiled = torch.compile(fn, fullgraph=True)
    loss, ref = compiled(*leaves), fn(*leaves)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    for g, r in zip(torch.autograd.grad(loss, leaves), torch.autograd.grad(ref, leaves)):
        torch.testing.assert_close(g, r, rtol=2e-2, atol=2e-2)
