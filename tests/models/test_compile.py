"""The model compiles as one graph in every ablation layout that ``lamamba experiment`` trains (the scan and
routing are opaque custom ops), and ``compile_model`` keeps the construction of index tensors out of it."""
import pytest
import torch

import lamamba
from lamamba.models import compile_model
from lamamba.ops import scan_paths, window_attention

VARIANTS = [dict(), dict(attention="none"), dict(attention="global"), dict(shift=False), dict(skip="concat"),
            dict(layout="isotropic", patch_size=2, isotropic_depth=2)]
# host-side index construction (scan paths, relative index, window masks) that must not be in a compiled graph
INDEX_OPS = ("flip", "argsort", "meshgrid", "zeros", "eq")


def tiny(**overrides):
    return lamamba.create_model("LaMamba-Diff-S", image_size=16, latent_downsample=1, in_channels=1,
                                num_classes=10, embed_dim=8, cond_dim=16, num_heads=2, window_size=4, **overrides)


def inputs():
    return torch.randn(2, 1, 16, 16), torch.randint(0, 1000, (2,)), torch.randint(0, 10, (2,))


def test_forward_has_no_graph_breaks():
    import torch._dynamo as dynamo

    explanation = dynamo.explain(tiny().eval())(*inputs())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    dynamo.reset()


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "base")
def test_compile_model_one_graph_without_index_construction(overrides):
    targets: list[str] = []

    def capture(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    torch._dynamo.reset()
    scan_paths._device_cache.clear()   # start cold: compile_model's warm-up must fill the caches
    window_attention._cache.clear()
    model = tiny(**overrides).train()
    net = compile_model(model, backend=capture, fullgraph=True)   # fullgraph: a graph break raises
    assert model.training                                          # the warm-up forward restored the mode
    x, t, y = inputs()
    out = net(x, t, y)
    assert out.shape == (2, 2, 16, 16)
    found = [t for t in targets if any(f"{op} " in t or t.endswith(f".{op}") or f"function {op}" in t
                                       for op in INDEX_OPS)]
    assert not found, found
    torch._dynamo.reset()
