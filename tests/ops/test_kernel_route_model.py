"""A whole (tiny) LaMamba-Diff with every Triton kernel (SS2D scan, fused AdaLN glue, fused gated norm, window
attention) against the same model on the PyTorch route: output and every parameter gradient, in float64 and
float32 (float32 on GPUs; window attention takes its kernel route in float32 only).

Interpreted on CPU machines (``LAMAMBA_SCAN_BACKEND=triton``), compiled on CUDA tensors on GPUs: the kernels' integration into
the blocks (modulation slices as strided views, residual stream, gradients through the custom ops and the
eager autograd functions) is checked end to end, not only op by op.
"""
import gc

import pytest
import torch
from triton_env import INTERPRETED, runnable

import lamamba


def tiny_model(dtype, **overrides):
    torch.manual_seed(0)
    kw = dict(embed_dim=8, cond_dim=16, num_heads=2, window_size=4, depths=(2, 1), decoder_depths=(1, 1),
              bottleneck_depth=0, num_downsamples=1, **overrides)  # shifted and unshifted windows, both stages
    model = lamamba.create_model("LaMamba-Diff-S", image_size=8, in_channels=2, num_classes=10,
                                 latent_downsample=1, **kw).to(DEVICE, dtype)
    with torch.no_grad():  # AdaLN-Zero starts every block as the identity: give the branches something to do
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


DEVICE = "cpu" if INTERPRETED or not torch.cuda.is_available() else "cuda"  # compiled Triton needs CUDA tensors
DTYPES = (torch.float64, torch.float32) if DEVICE == "cpu" else (torch.float32,)


def forward_backward(model):
    g = torch.Generator().manual_seed(1)
    dtype = next(model.parameters()).dtype
    x = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    t, y = torch.tensor([3, 700], device=DEVICE), torch.tensor([1, 10], device=DEVICE)
    model.zero_grad()
    out = model(x, t, y)
    (out * torch.randn(out.shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@runnable
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_route_equals_reference_route(monkeypatch, dtype):
    # full fp32 on GPUs: cuDNN convolutions default to TF32 (10-bit mantissa), which would round inputs that
    # differ in the last bits of fp32 (as the two routes' do after the first block) to values 1e-3 apart
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = tiny_model(dtype)
    tol = {} if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    monkeypatch.setenv("LAMAMBA_SCAN_BACKEND", "reference")
    ref_out, ref_grads = forward_backward(model)
    monkeypatch.setenv("LAMAMBA_SCAN_BACKEND", "triton")
    out, grads = forward_backward(model)
    torch.testing.assert_close(out, ref_out, **tol)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name, **tol)


@runnable
def test_kernel_route_step_leaves_no_tensor_behind(monkeypatch):
    """A training step through every kernel leaves no tensor alive but the gradients. An op that caches a tensor it
    makes in a step would, under CUDA graphs (lamamba train's GPU default), make it inside a graph's memory pool,
    where Inductor's CUDA-graph trees refuse live tensors they do not track: session 14 found the attention
    backward's cached table map stopping every graphed run at its first step (lamamba train then fell back to eager).
    As compile_model does, one forward without gradients runs first (what it caches is made outside any pool)."""
    monkeypatch.setenv("LAMAMBA_SCAN_BACKEND", "triton")
    model = tiny_model(torch.float32)
    x = torch.randn(2, 2, 8, 8, device=DEVICE)
    t, y = torch.tensor([3, 700], device=DEVICE), torch.tensor([1, 10], device=DEVICE)
    with torch.no_grad():
        model(x, t, y)

    def live_tensors():
        gc.collect()
        return [o for o in gc.get_objects() if torch.is_tensor(o)]

    before = {id(o) for o in live_tensors()}
    model(x, t, y).square().mean().backward()
    model.zero_grad(set_to_none=True)
    left = [(tuple(o.shape), o.dtype) for o in live_tensors() if id(o) not in before]
    assert not left, f"tensors kept past a training step: {left}"
