"""``CapturedForward``: one captured graph per input signature, static inputs refreshed before each replay, copies of
the output returned, autograd calls passed through. On the CPU a fake graph stands in for a CUDA graph: replaying it
runs the captured computation again on the static tensors, which is what a CUDA graph does; the GPU test captures a
regionally compiled model for real."""
import contextlib

import pytest
import torch

import lamamba
from lamamba.models.capture import CapturedForward
from lamamba.models.compile import compile_for_sampling, release_compiled


class FakeGraph:
    capturing = None   # the graph being captured, if any

    def __init__(self):
        self.replays, self.work = 0, None

    def replay(self):
        self.replays += 1
        self.work()


@contextlib.contextmanager
def fake_capture(graph, pool=None, capture_error_mode="global"):
    assert capture_error_mode == "thread_local"   # as Inductor's: other threads (NCCL's watchdog) may call CUDA
    FakeGraph.capturing = graph
    try:
        yield
    finally:
        FakeGraph.capturing = None


class Recorder:
    """``x * t + y`` (y optional), counting its calls; under a fake capture it records itself into the graph."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, t, y=None):
        self.calls += 1

        def compute():
            out = x * t[:, None]
            return out + y[:, None] if y is not None else out

        out = compute()
        if FakeGraph.capturing is not None:
            FakeGraph.capturing.work = lambda: out.copy_(compute())
        return out


def captured(warmup=2):
    forward = Recorder()
    return forward, CapturedForward(forward, warmup=warmup, graph_factory=FakeGraph, capture=fake_capture)


def test_replays_with_the_new_inputs_and_returns_copies():
    forward, fn = captured()
    x1, t1, y1 = torch.randn(3, 4), torch.randn(3), torch.randn(3)
    x2, t2, y2 = torch.randn(3, 4), torch.randn(3), torch.randn(3)
    with torch.no_grad():
        out1 = fn(x1, t1, y=y1)
        assert forward.calls == 3                            # two warm-up runs and the capture
        out2 = fn(x2, t2, y=y2)
    assert forward.calls == 3 and len(fn.captures) == 1   # replayed, not run again
    torch.testing.assert_close(out1, x1 * t1[:, None] + y1[:, None])
    torch.testing.assert_close(out2, x2 * t2[:, None] + y2[:, None])   # the first output was not overwritten
    entry = next(iter(fn.captures.values()))
    assert entry.graph.replays == 2 and out2.data_ptr() != entry.output.data_ptr()


def test_one_capture_per_signature():
    forward, fn = captured(warmup=0)
    x, t, y = torch.randn(3, 4), torch.randn(3), torch.randn(3)
    with torch.no_grad():
        fn(x, t, y)
        fn(x, t, y=y)                                    # keyword: another signature
        fn(x, t)                                         # no label
        fn(x[:2], t[:2], y[:2])                          # another batch size
        fn(x.double(), t.double(), y.double())           # another dtype
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fn(x, t, y)                                  # another autocast state
        fn(x, t, y)
    assert len(fn.captures) == 6 and forward.calls == 6
    torch.testing.assert_close(fn(x, t), x * t[:, None])


def test_calls_with_gradients_are_not_captured():
    forward, fn = captured()
    x = torch.randn(3, 4, requires_grad=True)
    out = fn(x, torch.ones(3))
    out.sum().backward()
    assert forward.calls == 1 and not fn.captures and torch.equal(x.grad, torch.ones(3, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_regional_compile_with_captured_forward_equals_compiled_and_eager():
    """Blocks compiled regionally, the whole forward captured: the regionally compiled forward's outputs (the same
    kernels) and, within bf16 rounding, eager's; guided and unguided, two batch sizes, earlier outputs kept intact."""
    torch.manual_seed(0)
    model = lamamba.create_model("LaMamba-Diff-S", image_size=16, in_channels=1, num_classes=10, latent_downsample=1,
                                 embed_dim=32, cond_dim=64, num_heads=2, window_size=4).cuda().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    cases = [(torch.randn(n, 1, 16, 16, device="cuda"), torch.randint(0, 1000, (n,), device="cuda"),
              torch.randint(0, 11, (n,), device="cuda")) for n in (4, 4, 2)]

    def outputs():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return [model(x, t, y).float() for x, t, y in cases] + [
                model.forward_with_cfg(*cases[0], cfg_scale=3.0).float()]

    try:
        eager = outputs()
        compile_for_sampling(model, scope="regional")
        compiled = outputs()
        compile_for_sampling(model, scope="regional", cuda_graphs=True)
        graphed = outputs()
        assert len(model.forward.captures) == 2
        for g, c, e in zip(graphed, compiled, eager):
            torch.testing.assert_close(g, c, atol=1e-3, rtol=1e-3)
            torch.testing.assert_close(g, e, atol=0.05 * e.abs().max().item(), rtol=0)
    finally:
        release_compiled()
