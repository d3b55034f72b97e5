"""The model compiles without graph breaks in the forward (the scan and routing are opaque custom ops)."""
import torch

import lamamba


def test_forward_has_no_graph_breaks():
    import torch._dynamo as dynamo

    model = lamamba.create_model("LaMamba-Diff-S", image_size=16, latent_downsample=1, in_channels=1,
                                 num_classes=10, embed_dim=8, cond_dim=16, num_heads=2, window_size=4).eval()
    x, t, y = torch.randn(2, 1, 16, 16), torch.randint(0, 1000, (2,)), torch.randint(0, 10, (2,))
    explanation = dynamo.explain(model)(x, t, y)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    dynamo.reset()
