"""SS2D's Triton scan kernels (``lamamba.ops.triton_ss2d``) against the PyTorch reference in float64.

Interpreted on CPU machines at tiny sizes with tiny tiles (several tiles, chunks and channel blocks), compiled on
GPU machines at model shapes (``triton_env``).
"""
import dataclasses

import pytest
import torch
from triton_env import gpu, interpreter, rel_err, runnable, triton

from lamamba.ops import triton_ss2d, triton_ss2d_kernels
from lamamba.ops.ss2d_scan import ss2d_scan_directions, ss2d_scan_directions_reference, ss2d_selective_scan
from lamamba.ops.scan_paths import scan_paths
from lamamba.ops.time_steps import dt_projection

tl = triton.language
NAMES = ("x", "delta", "A", "B", "C", "D", "delta_bias")


@pytest.fixture
def launch(monkeypatch):
    """Override launch parameters, e.g. tiny tiles, or many programs per SM to force chunks along the length."""
    def override(**kw):
        monkeypatch.setattr(triton_ss2d, "SS2D_LAUNCH", dataclasses.replace(triton_ss2d.SS2D_LAUNCH, **kw))
    return override


def ss2d_inputs(batch, H, W, d, N, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    L, K = H * W, 4
    inp = dict(x=r(batch, L, d), delta=r(batch, L, K, d),
               A=-torch.rand(K * d, N, generator=g, dtype=torch.float64) - 0.1, B=r(batch, L, K, N),
               C=r(batch, L, K, N), D=r(K * d), delta_bias=r(K * d) * 0.1)
    return {k: v.to(device, dtype) for k, v in inp.items()}


def check(inp, H, W, tol, grad_tol=None):
    """Triton per-direction outputs and every gradient against the float64 reference on the same inputs."""
    leaves = [inp[k].detach().clone().requires_grad_(True) for k in NAMES]
    ys = triton_ss2d.ss2d_scan_directions(*leaves, H, W)
    assert ys.dtype == inp["x"].dtype and ys.shape == (*inp["x"].shape[:2], 4, inp["x"].shape[2])
    ref_leaves = [inp[k].detach().double().requires_grad_(True) for k in NAMES]
    ref = ss2d_scan_directions_reference(*ref_leaves, H, W)
    assert rel_err(ys, ref) < tol
    dys = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(ref.device)
    dys = dys.to(ys.dtype)
    grads = torch.autograd.grad(ys, leaves, dys)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dys.double())
    for name, a, g, r in zip(NAMES, leaves, grads, ref_grads):
        assert g.shape == a.shape and g.dtype == a.dtype, name
        assert rel_err(g, r) < (grad_tol or tol), name


# ------------------------------------------------------------------------------------------------
#                        Building blocks: paths and the reverse scan
# ------------------------------------------------------------------------------------------------

@triton.jit
def _pixels_kernel(out_ptr, H, W, BLOCK: tl.constexpr):
    k = tl.program_id(0)
    s = tl.arange(0, BLOCK)
    tl.store(out_ptr + k * H * W + s, triton_ss2d_kernels._pixel(tl.minimum(s, H * W - 1), k, H, W),
             mask=s < H * W)


@triton.jit
def _div_kernel(out_ptr, n, S, BLOCK: tl.constexpr):
    s = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + s, triton_ss2d_kernels._div(s, n), mask=s < S)


@triton.jit
def _reverse_scan_kernel(a_ptr, b_ptr, out_ptr, T: tl.constexpr):
    r = tl.arange(0, T)
    _, g = tl.associative_scan((tl.load(a_ptr + r), tl.load(b_ptr + r)), 0, triton_ss2d_kernels._compose,
                               reverse=True)
    tl.store(out_ptr + r, g)


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@runnable
@pytest.mark.parametrize("H,W", [(4, 4), (5, 3), (2, 7), (1, 5), (6, 1)])
def test_kernel_paths_are_the_scan_paths(H, W):
    out = torch.empty(4, H * W, dtype=torch.int64, device=_device())
    _pixels_kernel[(4,)](out, H, W, BLOCK=triton.next_power_of_2(H * W))
    assert torch.equal(out.cpu(), scan_paths(H, W)[0])


@runnable
@pytest.mark.parametrize("n", [1, 3, 7, 31, 32, 33, 96, 127, 1447, 2047, 2 ** 21 - 1])
def test_float_division_of_steps_is_exact(n):
    """The paths' ``s // n`` in float arithmetic, for every step a map may have (``s < 2**21``) on GPUs (there the
    division is approximate: this is the test that matters), a small range interpreted."""
    S = 2 ** 21 if torch.cuda.is_available() else 4096
    out = torch.empty(S, dtype=torch.int32, device=_device())
    _div_kernel[(triton.cdiv(S, 1024),)](out, n, S, BLOCK=1024)
    assert torch.equal(out.cpu().long(), torch.arange(S) // n)


@runnable
def test_reverse_associative_scan_solves_the_reverse_recurrence():
    """``g_t = b_t + a_t g_{t+1}``: the order in which ``reverse=True`` combines is what the backward relies on."""
    T = 32
    a, b = torch.rand(T, device=_device()), torch.randn(T, device=_device())
    out = torch.empty_like(a)
    _reverse_scan_kernel[(1,)](a, b, out, T=T)
    g, carry = torch.empty(T), 0.0
    for t in reversed(range(T)):
        carry = b[t].item() + a[t].item() * carry
        g[t] = carry
    torch.testing.assert_close(out.cpu(), g)


# ------------------------------------------------------------------------------------------------
#                                 Interpreted kernels (CPU)
# ------------------------------------------------------------------------------------------------

@interpreter
@pytest.mark.parametrize("H,W,d,N,even", [(4, 4, 3, 1, False), (3, 5, 2, 3, False), (2, 3, 2, 16, False),
                                          (4, 4, 4, 1, True), (2, 4, 2, 2, True)])
def test_float64_matches_reference(launch, H, W, d, N, even):
    """Partial tiles (masked loads) and only full ones (``even``: unmasked), one and several state indices."""
    launch(block_t=4)                                      # several tiles per sequence
    assert triton_ss2d._plan(2, H, W, d, N, torch.device("cpu")).even == even
    check(ss2d_inputs(2, H, W, d, N), H, W, tol=1e-10)


@interpreter
def test_chunks_along_the_length_and_several_channel_blocks(launch):
    launch(block_t=4, max_block_d=2, programs_per_sm=1000)  # L = 20: 5 one-tile chunks; d = 3: 2 channel blocks
    assert triton_ss2d._plan(1, 5, 4, 3, 2, torch.device("cpu")).n_chunks == 5
    check(ss2d_inputs(1, 5, 4, 3, 2), 5, 4, tol=1e-10)


@interpreter
@pytest.mark.parametrize("d", [3, 4])
def test_uneven_chunks_leave_no_step_out(launch, d):
    """7 tiles in 4 chunks of 2: the last chunk is one tile short, with masked tiles (d 3) and unmasked ones (d 4:
    a loop over the empty slot would write the clamped last step again)."""
    launch(block_t=4, programs_per_sm=16)
    plan = triton_ss2d._plan(1, 7, 4, d, 1, torch.device("cpu"))
    assert (plan.n_tiles, plan.n_chunks, plan.chunk_tiles, plan.even) == (7, 4, 2, d == 4)
    check(ss2d_inputs(1, 7, 4, d, 1), 7, 4, tol=1e-10)


@interpreter
def test_float32_and_bfloat16(launch):
    launch(block_t=8)
    check(ss2d_inputs(1, 5, 3, 3, 1, dtype=torch.float32), 5, 3, tol=1e-5)
    inp = ss2d_inputs(1, 3, 4, 3, 2, dtype=torch.float32)
    inp.update({k: inp[k].bfloat16() for k in ("x", "delta", "B", "C")})
    check(inp, 3, 4, tol=1e-2, grad_tol=2e-2)            # bf16 outputs and gradients: bf16 rounding


@interpreter
def test_strided_B_and_C_views_and_the_summed_scan(monkeypatch):
    """B and C are read where the projection wrote them (views of one tensor); the sum is the SS2D output."""
    monkeypatch.setenv("LAMAMBA_SCAN_BACKEND", "triton")
    inp = ss2d_inputs(1, 3, 3, 2, 2, dtype=torch.float32)
    proj = torch.randn(1, 9, 4, 5, requires_grad=True)   # (b, L, K, R + 2N) with R = 1
    _, B, C = proj.split([1, 2, 2], dim=-1)
    args = [inp["x"], inp["delta"], inp["A"], B, C, inp["D"], inp["delta_bias"]]
    y = ss2d_selective_scan(*args, 3, 3)
    monkeypatch.setenv("LAMAMBA_SCAN_BACKEND", "reference")
    ref = ss2d_selective_scan(*args, 3, 3)
    assert y.dtype == torch.float32 and y.shape == (1, 9, 2)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), proj)[0], torch.autograd.grad(ref.sum(), proj)[0])


@interpreter
def test_states_saved_only_when_differentiating():
    args = [ss2d_inputs(1, 2, 4, 2, 1)[k] for k in NAMES]
    ys, ckpt = torch.ops.lamamba.ss2d_scan_fwd(*args, 2, 4, False)
    assert ckpt.numel() == 0
    torch.testing.assert_close(ys, ss2d_scan_directions_reference(*args, 2, 4))


@interpreter
def test_custom_ops_pass_opcheck_and_compile_to_one_graph():
    inp = ss2d_inputs(1, 2, 4, 2, 1, dtype=torch.float32)
    # delta K-major, as the model's einsum gives it on CUDA: the fake gradients must have the real ones' strides
    inp["delta"] = inp["delta"].permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3)
    args = [inp[k].requires_grad_(True) for k in NAMES]
    torch.library.opcheck(torch.ops.lamamba.ss2d_scan_fwd.default, (*args, 2, 4, True))
    ys, ckpt = torch.ops.lamamba.ss2d_scan_fwd(*[a.detach() for a in args], 2, 4, True)
    torch.library.opcheck(torch.ops.lamamba.ss2d_scan_bwd.default,
                          (torch.randn_like(ys), *[a.detach() for a in args], ckpt, 2, 4))
    # delta given by its recipe (dt_raw, weight): the forward keeps it instead, the backward recomputes delta
    dt_raw, weight = torch.randn(1, 8, 4, 3, requires_grad=True), torch.randn(4, 2, 3, requires_grad=True)
    delta = dt_projection(dt_raw, weight).detach().requires_grad_(True)   # a leaf: opcheck runs backward often
    recipe_args = (*args[:1], delta, *args[2:])
    torch.library.opcheck(torch.ops.lamamba.ss2d_scan_fwd.default, (*recipe_args, 2, 4, True, dt_raw, weight))
    torch.library.opcheck(torch.ops.lamamba.ss2d_scan_bwd.default,
                          (torch.randn_like(ys), args[0].detach(), None, *[a.detach() for a in args[2:]], ckpt, 2, 4,
                           dt_raw.detach(), weight.detach(), delta.dtype))
    fn = lambda *a: triton_ss2d.ss2d_scan_directions(*a, 2, 4).sum(2).square().sum()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")   # fullgraph: no graph break
    loss, ref = compiled(*args), fn(*args)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)   # compiled vs eager: equal to rounding
    torch.testing.assert_close(torch.autograd.grad(loss, args), torch.autograd.grad(ref, args), rtol=1e-4, atol=1e-4)


def test_meta_tensors_give_shapes():
    """Forward and backward on meta tensors (tracing, FLOP counts), delta kept or given by its recipe."""
    inp = {k: v.to("meta") for k, v in ss2d_inputs(2, 4, 6, 3, 2).items()}
    ys = triton_ss2d.ss2d_scan_directions(*[inp[k] for k in NAMES], 4, 6)
    assert ys.shape == (2, 24, 4, 3) and ys.dtype == torch.float64
    dt_raw, weight = torch.empty(2, 24, 4, 5, device="meta", dtype=torch.float64), torch.empty(4, 3, 5, device="meta")
    rest = [inp[k] for k in NAMES[2:]]
    ckpt = torch.empty(0, device="meta")
    for delta, recipe in ((inp["delta"], (None, None, None)), (None, (dt_raw, weight, torch.float64))):
        grads = torch.ops.lamamba.ss2d_scan_bwd(ys, inp["x"], delta, *rest, ckpt, 4, 6, *recipe)
        assert [tuple(g.shape) for g in grads[:2]] == [(2, 24, 4, 3), (2, 24, 4, 3)]   # dx per direction, ddelta


@pytest.mark.parametrize("name,shape,msg", [
    ("delta", (2, 16, 4, 4), "delta must have shape"),
    ("A", (11, 2), "A must have shape"),
    ("B", (2, 16, 3, 2), "B must have shape"),
    ("x", (2, 16), "x must be"),
])
def test_clear_errors(name, shape, msg):
    inp = ss2d_inputs(2, 4, 4, 3, 2)
    inp[name] = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=msg):
        ss2d_scan_directions(*[inp[k] for k in NAMES], 4, 4)


@interpreter
def test_maps_beyond_32_bit_offsets_are_refused():
    inp = {k: v[:, :1] if k in ("x", "delta", "B", "C") else v for k, v in ss2d_inputs(1, 1, 1, 2, 1).items()}
    big = {k: v.expand(1, 2 ** 21, *v.shape[2:]) if k in ("x", "delta", "B", "C") else v for k, v in inp.items()}
    with pytest.raises(ValueError, match="32-bit offsets"):
        triton_ss2d.ss2d_scan_directions(*[big[k] for k in NAMES], 2 ** 11, 2 ** 10)


def test_map_size_must_match_length():
    inp = ss2d_inputs(1, 4, 4, 3, 1)
    with pytest.raises(ValueError, match="4x5 = 20 pixels but x has L = 16"):
        ss2d_scan_directions(*[inp[k] for k in NAMES], 4, 5)


# ------------------------------------------------------------------------------------------------
#                              GPU: model shapes, compiled kernels
# ------------------------------------------------------------------------------------------------

def _gpu_inputs(batch, H, W, d, N, dtype):
    inp = ss2d_inputs(batch, H, W, d, N, dtype=torch.float32, device="cuda")
    return {k: v.to(dtype) if k in ("x", "delta", "B", "C") else v for k, v in inp.items()}


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,H,W,d,N", [(2, 32, 32, 640, 1), (2, 16, 16, 128, 16), (1, 128, 96, 64, 1)])
def test_gpu_model_shapes(dtype, batch, H, W, d, N):
    """XL stage 1 at 256 px (N = 1), d_state = 16, and a long non-square map split into chunks."""
    fp32 = dtype == torch.float32
    check(_gpu_inputs(batch, H, W, d, N, dtype), H, W, tol=1e-5 if fp32 else 1e-2, grad_tol=1e-5 if fp32 else 2e-2)


@gpu
def test_gpu_precise_math(launch):
    """``fast_math=0``: the precise exp and log (GPUs default to the approximate ones, tested above)."""
    launch(fast_math=0)
    check(_gpu_inputs(2, 32, 32, 640, 1, torch.float32), 32, 32, tol=1e-5)


@gpu
def test_gpu_compiles_without_graph_breaks():
    inp = _gpu_inputs(2, 16, 16, 128, 1, torch.float32)
    args = [inp[k].requires_grad_(True) for k in NAMES]
    fn = lambda *a: ss2d_selective_scan(*a, 16, 16).square().sum()
    compiled = torch.compile(fn, fullgraph=True)
    loss, ref = compiled(*args), fn(*args)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(loss, args), torch.autograd.grad(ref, args), rtol=1e-4, atol=1e-4)


def test_launch_overrides_from_the_environment(monkeypatch):
    monkeypatch.setenv("LAMAMBA_SS2D_LAUNCH", "block_t=8, bwd_num_warps=2")
    cfg = triton_ss2d.launch_config()
    assert (cfg.block_t, cfg.bwd_num_warps, cfg.max_block_d) == (8, 2, triton_ss2d.SS2D_LAUNCH.max_block_d)
    assert triton_ss2d._plan(1, 4, 4, 3, 1, torch.device("cpu")).block_t == 8
    monkeypatch.setenv("LAMAMBA_SS2D_LAUNCH", "fast_math=0")
    assert triton_ss2d.launch_config().fast_math == 0
    monkeypatch.setenv("LAMAMBA_SS2D_LAUNCH", "block_t=0")
    with pytest.raises(ValueError, match="FIELD=POSITIVE_INT"):
        triton_ss2d.launch_config()
    monkeypatch.setenv("LAMAMBA_SS2D_LAUNCH", "block_size=8")
    with pytest.raises(ValueError, match="FIELD=POSITIVE_INT"):
        triton_ss2d.launch_config()
