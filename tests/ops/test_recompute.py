"""Recomputing instead of keeping: ``recompute_in_backward`` (eager, any tensor) and SS2D's time steps, which the
scan's backward recomputes from their rank-R projection in eager and compiled mode."""
import pytest
import torch
from triton_env import gpu, interpreter

from lamamba.ops.recompute import recompute_in_backward


def product(a, w):
    return a @ w


def test_gradients_are_unchanged_and_the_tensor_is_recomputed_not_kept():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    calls = []

    def fn(a, w):
        calls.append(1)
        return product(a, w)

    y = product(a, w)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ref = (y * y.exp()).sum()                     # mul and exp keep y (or its storage) for the backward
    assert any(s.untyped_storage().data_ptr() == y.untyped_storage().data_ptr() for s in saved)
    y = product(a, w)
    with recompute_in_backward(y, fn, a, w):
        out = (y * y.exp()).sum()
    assert calls == []                                # nothing recomputed in the forward
    grads = torch.autograd.grad(out, (a, w))
    assert len(calls) >= 1                            # the backward rebuilt y
    torch.testing.assert_close(grads, torch.autograd.grad(ref, (a, w)), rtol=0, atol=0)


def test_the_recipe_uses_the_saved_dtype_without_autocast():
    a = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = a @ w                                     # bf16 under autocast
        with recompute_in_backward(y, product, a, w):
            out = (y.float() * y.float()).sum() + y.sum()
    ref_a = a.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref = ref_a @ w
        ref = (y_ref.float() * y_ref.float()).sum() + y_ref.sum()
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(torch.autograd.grad(out, a)[0], torch.autograd.grad(ref, ref_a)[0])


def test_nothing_happens_without_gradients():
    a, w = torch.randn(2, 2), torch.randn(2, 2)
    y = a @ w
    with torch.no_grad(), recompute_in_backward(y, pytest.fail, a, w):
        (y * y).sum()


@interpreter
def test_ss2d_recomputes_its_time_steps_in_the_backward(monkeypatch):
    """On the Triton route (interpreted on CPU machines) SS2D's scan keeps a recipe for delta, not delta: nothing of
    delta's shape is saved, the backward calls dt_projection again, and the gradients equal the reference route's
    (which keeps them)."""
    import lamamba.models.lamamba as lm
    import lamamba.ops.triton_ss2d as triton_ss2d

    calls = []

    def counted(original):
        def projection(*args, **kwargs):
            calls.append(torch.is_grad_enabled())
            return original(*args, **kwargs)
        return projection

    monkeypatch.setattr(lm, "dt_projection", counted(lm.dt_projection))                 # the forward's
    monkeypatch.setattr(triton_ss2d, "dt_projection", counted(triton_ss2d.dt_projection))  # the backward's
    torch.manual_seed(0)
    op = lm.SS2D(dim=8, d_state=2).double()
    u = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    delta_shape = (2, 15, 4, op.d_inner)
    grads = {}
    for backend in ("triton", "reference"):
        monkeypatch.setenv("LAMAMBA_SCAN_BACKEND", backend)
        calls.clear()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
            out = op(u)
        grads[backend] = torch.autograd.grad(out.square().sum(), [u, *op.parameters()])
        if backend == "triton":
            assert calls == [True, False]             # the forward, then the backward's recompute
            assert delta_shape not in saved
    torch.testing.assert_close(grads["triton"], grads["reference"], rtol=1e-9, atol=1e-12)


@interpreter
def test_compiled_ss2d_keeps_no_time_steps(monkeypatch):
    """Compiled, AOT autograd decides what the forward keeps (saved-tensor hooks are not traced); the Triton route's
    scan op keeps delta's recipe, so the partitioned forward (min-cut, as Inductor's) outputs no tensor of delta's
    shape for the backward. Session 9 found compiled steps keeping it (~1.7 GiB of LaMamba-Diff-S at batch 128)."""
    from functorch.compile import min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd

    from lamamba.models.lamamba import SS2D

    monkeypatch.setenv("LAMAMBA_SCAN_BACKEND", "triton")
    kept = []

    def forward_compiler(gm, example_inputs):
        outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        kept.extend(tuple(o.meta["val"].shape) for o in outputs if hasattr(o, "meta") and "val" in o.meta)
        return gm

    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=lambda gm, _: gm,
                           partition_fn=min_cut_rematerialization_partition)
    torch.manual_seed(0)
    op = SS2D(dim=8, d_state=1)
    u = torch.randn(2, 4, 4, 8, requires_grad=True)
    torch.compile(op, backend=backend, fullgraph=True)(u).sum().backward()
    torch._dynamo.reset()
    assert kept and (2, 16, 4, op.d_inner) not in kept


def test_inside_other_saved_tensor_hooks_it_steps_aside():
    """Activation checkpointing installs saved-tensor hooks; ours would override them for the region."""
    a = torch.randn(3, 3, requires_grad=True)
    y = a * 2
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t) or t, lambda t: t):
        with recompute_in_backward(y, pytest.fail, a):
            out = (y * y).sum()
    assert any(t is y for t in seen)                  # the outer hooks saw y: ours were not installed
    out.backward()


def grads_recomputed_and_kept(monkeypatch, op, u, device_type):
    """SS2D's gradients under bf16 autocast, first with delta recomputed in the backward, then kept."""
    import lamamba.models.lamamba as lm

    scan = lm.ss2d_scan_directions
    grads = []
    for recompute in (True, False):
        if not recompute:
            monkeypatch.setattr(lm, "ss2d_scan_directions", lambda *args, delta_from=None: scan(*args))
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = op(u)
        grads.append(torch.autograd.grad(out.float().square().sum(), [u, *op.parameters()]))
    return grads


@interpreter
def test_ss2d_under_autocast_recomputes_the_same_time_steps(monkeypatch):
    """bf16 autocast: the recomputed delta equals the forward's bit for bit, so the gradients are those of a run
    that keeps delta."""
    from lamamba.models.lamamba import SS2D

    monkeypatch.setenv("LAMAMBA_SCAN_BACKEND", "triton")
    torch.manual_seed(0)
    op = SS2D(dim=8, d_state=2)
    recomputed, kept = grads_recomputed_and_kept(monkeypatch, op, torch.randn(2, 3, 5, 8, requires_grad=True), "cpu")
    torch.testing.assert_close(recomputed, kept, rtol=0, atol=0)


@gpu
def test_gpu_ss2d_recompute_gives_the_kept_time_steps_gradients(monkeypatch):
    """On CUDA, bf16 autocast, a first-stage-like shape: the backward's recomputed delta (cuBLAS, padded rank)
    gives the gradients of a run that keeps delta."""
    from lamamba.models.lamamba import SS2D

    torch.manual_seed(0)
    op = SS2D(dim=96).cuda()
    u = torch.randn(8, 32, 32, 96, device="cuda", requires_grad=True)
    recomputed, kept = grads_recomputed_and_kept(monkeypatch, op, u, "cuda")
    for a, b in zip(recomputed, kept):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
