"""Shared checks over every registered model at tiny width (diffusers-style), plus LaMamba specifics."""
import math

import pytest
import torch

import lamamba
from lamamba.models import LaMambaBlock, model_config, model_from_config

TINY = {
    "LaMamba": dict(embed_dim=8, cond_dim=16, num_heads=2, window_size=4),
    "DiT": dict(hidden_size=16, depth=2, num_heads=2),
}


def tiny(name, image_size=16, in_channels=4, num_classes=10, **overrides):
    family = "LaMamba" if name.startswith("LaMamba") else "DiT"
    kw = dict(TINY[family], **overrides)
    torch.manual_seed(0)
    return lamamba.create_model(name, image_size=image_size, in_channels=in_channels, num_classes=num_classes,
                                latent_downsample=1, **kw)


def inputs(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    x = torch.randn(n, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, max(cfg.num_classes, 1), (n,), generator=g)
    return x, t, y


def randomize(model):
    """Perturb every parameter so that zero-initialised layers pass gradients too."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


@pytest.mark.parametrize("name", lamamba.list_models())
def test_forward_backward_every_model(name):
    patch = int(name.split("/")[1]) if "/" in name else 1
    model = tiny(name, image_size=8 * patch if patch > 2 else 16)
    randomize(model)
    x, t, y = inputs(model)
    out = model(x, t, y)
    assert out.shape == (2, 8, *x.shape[2:])
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ["LaMamba-Diff-S", "DiT-S/2"])
def test_gradients_have_their_parameters_strides(name):
    """DDP's gradient layout contract: its buckets take each parameter's strides, and a gradient of other strides
    (even in a dimension of size 1, as the depthwise conv's weight had) is copied with a warning in every run. At a
    width where the time-step rank is above 1 (``ceil(width / 16)``; a rank of 1 is a size-1 dimension too)."""
    model = tiny(name, **(dict(embed_dim=32) if name.startswith("LaMamba") else dict(hidden_size=32)))
    randomize(model)
    x, t, y = inputs(model)
    model(x, t, y).square().mean().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad.stride() == p.stride(), (pname, p.grad.stride(), p.stride())


@pytest.mark.parametrize("name", ["LaMamba-Diff-S", "LaMamba-Diff-XL", "DiT-S/2"])
def test_zero_init_outputs_zero_and_blocks_are_identity(name):
    model = tiny(name).eval()
    x, t, y = inputs(model)
    seen = []
    block_type = LaMambaBlock if name.startswith("LaMamba") else type(model.blocks[0])
    for m in model.modules():
        if isinstance(m, block_type):
            m.register_forward_hook(lambda mod, args, out: seen.append(torch.equal(args[0], out)))
    out = model(x, t, y)
    assert torch.equal(out, torch.zeros_like(out))
    assert seen and all(seen)


def test_bottleneck_doubles_its_input_at_init():
    model = tiny("LaMamba-Diff-XL").eval()
    record = {}
    model.mid_layer.register_forward_hook(lambda mod, args, out: record.update(inp=args[0], out=out))
    model(*inputs(model))
    torch.testing.assert_close(record["out"], record["inp"])  # blocks are identities; outer residual doubles


@pytest.mark.parametrize("name,expected", [
    ("LaMamba-Diff-S", 33_380_936), ("LaMamba-Diff-B", 132_140_168), ("LaMamba-Diff-L", 418_210_920),
    ("LaMamba-Diff-XL", 652_484_648), ("DiT-XL/2", 675_129_632), ("DiT-S/2", 32_963_360),
])
def test_full_size_parameter_counts(name, expected):
    with torch.device("meta"):
        model = lamamba.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("overrides,image_size,expected", [
    (dict(d_state=16), 256, 659_742_248), ({}, 512, 653_467_688), ({}, 1024, 657_399_848),
])
def test_xl_variants_parameter_counts(overrides, image_size, expected):
    with torch.device("meta"):
        model = lamamba.create_model("LaMamba-Diff-XL", image_size=image_size, **overrides)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("image_size", [256, 512, 1024])
def test_full_size_xl_shapes_on_meta(image_size):
    with torch.device("meta"):
        model = lamamba.create_model("LaMamba-Diff-XL", image_size=image_size)
        side = image_size // 8
        out = model(torch.empty(1, 4, side, side), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    assert out.shape == (1, 8, side, side)


@pytest.mark.parametrize("image_size", [16, 24, 40])  # 24: stages 24/12/6 (padding, single window)
def test_any_divisible_size_and_one_channel(image_size):
    model = tiny("LaMamba-Diff-S", image_size=image_size, in_channels=1)
    randomize(model)
    x, t, y = inputs(model)
    out = model(x, t, y)
    assert out.shape == (2, 2, image_size, image_size) and torch.isfinite(out).all()


ABLATIONS = [dict(attention="none"), dict(shift=False), dict(attention="global"), dict(skip="concat"),
             dict(num_downsamples=1), dict(num_downsamples=3, depths=(2, 2, 2, 2), image_size=32),
             dict(depths=(1, 2, 3, 1), decoder_depths=(1, 1, 1, 1)), dict(layout="isotropic", patch_size=2),
             dict(layout="isotropic", patch_size=1, isotropic_depth=2), dict(d_state=4), dict(learn_sigma=False)]


@pytest.mark.parametrize("overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_ablation_switches_build_and_train(overrides):
    overrides = dict(overrides)
    model = tiny("LaMamba-Diff-S", image_size=overrides.pop("image_size", 16), **overrides)
    randomize(model)
    x, t, y = inputs(model)
    out = model(x, t, y)
    assert out.shape == (2, 4 if overrides.get("learn_sigma") is False else 8, *x.shape[2:])
    out.square().mean().backward()


def test_ablation_structure():
    none = tiny("LaMamba-Diff-S", attention="none")
    assert not any(hasattr(b, "attn") for b in none.blocks())
    assert all(b.adaLN_modulation[-1].out_features == 6 * b.norm.normalized_shape[0] for b in none.blocks())
    noshift = tiny("LaMamba-Diff-S", shift=False)
    assert all(b.attn.shift == 0 for b in noshift.blocks())
    shifted = tiny("LaMamba-Diff-S")
    assert [b.attn.shift for b in shifted.layers[0].blocks] == [0, 2]
    glob = tiny("LaMamba-Diff-S", attention="global")
    assert glob.layers[0].blocks[0].attn.window_size == 16 and glob.layers[1].blocks[0].attn.window_size == 8
    one = tiny("LaMamba-Diff-S", num_downsamples=1)
    assert one.dims == [8, 16, 16, 16] and one.sides == [16, 8, 8, 8]
    # decoder depths follow the Stable Diffusion rule (+1, empty stages stay empty)
    s = tiny("LaMamba-Diff-S")
    assert [len(st.blocks) for st in s.layers_up] == [0, 3, 3, 3] and len(s.mid_layer.blocks) == 1


def test_condition_projection_rule():
    # paper widths: S has cond 192; projections where D != cond and in every decoder block
    with torch.device("meta"):
        s = lamamba.create_model("LaMamba-Diff-S")
    enc = [isinstance(b.condition_projection, torch.nn.Linear) for st in s.layers for b in st.blocks]
    assert enc == [True, True, False, False, True, True]          # widths 96, 192 (= cond), 384
    assert all(isinstance(b.condition_projection, torch.nn.Linear) for st in s.layers_up for b in st.blocks)


def test_classifier_free_guidance():
    model = tiny("LaMamba-Diff-S").eval()
    randomize(model)
    x, t, y = inputs(model, n=2)
    xx = torch.cat([x, x])
    tt = torch.cat([t, t])
    yy = torch.cat([y, torch.full_like(y, model.num_classes)])
    out = model.forward_with_cfg(xx, tt, yy, cfg_scale=4.0)
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 10))
    torch.testing.assert_close(out[:2, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]))
    torch.testing.assert_close(out[2:, :4], out[:2, :4])
    torch.testing.assert_close(out[:2, 4:], cond[:, 4:])                # variance channels not guided
    torch.testing.assert_close(model.forward_with_cfg(xx, tt, yy, 1.0)[:2], cond)
    dit_style = model.forward_with_cfg(xx, tt, yy, 4.0, guided_channels=3)
    torch.testing.assert_close(dit_style[:2, 3], cond[:, 3])            # channel 3 left unguided


def test_null_class_and_unconditional():
    model = tiny("LaMamba-Diff-S", num_classes=7)
    assert model.y_embedder.embedding_table.num_embeddings == 8
    uncond = tiny("LaMamba-Diff-S", num_classes=0).eval()
    x, t, _ = inputs(uncond)
    assert uncond(x, t).shape == (2, 8, 16, 16)
    assert uncond.y_embedder.embedding_table.num_embeddings == 1


def test_label_dropout_uses_null_class():
    model = tiny("LaMamba-Diff-S", num_classes=5)
    emb = model.y_embedder
    labels = torch.arange(5)
    assert torch.equal(emb.token_drop(labels, torch.tensor([1, 0, 1, 0, 0])), torch.tensor([5, 1, 5, 3, 4]))
    emb.dropout_prob = 1.0
    assert torch.equal(emb(labels, train=True), emb.embedding_table.weight[5].expand(5, -1))


def test_config_round_trip():
    model = tiny("LaMamba-Diff-S", attention="none")
    clone = model_from_config(model.config.to_dict())
    clone.load_state_dict(model.state_dict())
    x, t, y = inputs(model)
    randomize(model)
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.eval()(x, t, y), model.eval()(x, t, y))


def test_positional_embedding_layout():
    model = tiny("LaMamba-Diff-S")
    D = 8
    pe = model.pos_embed[0]                                            # (G, G, D)
    r, c, k = 3, 5, 1
    omega = 1 / 10000 ** (k / (D / 4))
    assert math.isclose(pe[r, c, k].item(), math.sin(c * omega), abs_tol=1e-6)           # columns first
    assert math.isclose(pe[r, c, D // 4 + k].item(), math.cos(c * omega), abs_tol=1e-6)
    assert math.isclose(pe[r, c, D // 2 + k].item(), math.sin(r * omega), abs_tol=1e-6)  # then rows
    assert model.pos_embed.requires_grad


def test_ss2d_initialisation():
    model = tiny("LaMamba-Diff-S", d_state=3)
    op = model.layers[0].blocks[0].op
    dt = torch.nn.functional.softplus(op.dt_projs_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    torch.testing.assert_close(-torch.exp(op.A_logs), -torch.arange(1.0, 4.0).expand(4 * op.d_inner, 3))
    assert torch.equal(op.Ds, torch.ones_like(op.Ds))
    assert op.x_proj_weight.shape == (4, op.dt_rank + 6, op.d_inner) and op.dt_rank == 1


@pytest.mark.parametrize("call,msg", [
    (lambda: lamamba.create_model("LaMamba-Diff-XXL"), "unknown model"),
    (lambda: lamamba.create_model("LaMamba-Diff-S", image_size=48), "not divisible by 4"),
    (lambda: lamamba.create_model("LaMamba-Diff-S", image_size=100), "not divisible by the autoencoder"),
    (lambda: lamamba.create_model("LaMamba-Diff-S", colour="red"), "unknown option"),
    (lambda: lamamba.create_model("LaMamba-Diff-S", attention="sparse"), "attention must be"),
    (lambda: lamamba.create_model("DiT-S/2", image_size=24, latent_downsample=1, **TINY["DiT"],
                                  patch_size=5), "not divisible by the patch size"),
])
def test_clear_errors_at_build(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_clear_errors_at_forward():
    model = tiny("LaMamba-Diff-S")
    x, t, y = inputs(model)
    with pytest.raises(ValueError, match="input channels"):
        model(x[:, :3], t, y)
    with pytest.raises(ValueError, match="built for 16x16"):
        model(torch.randn(2, 4, 32, 32), t, y)
    with pytest.raises(ValueError, match="needs labels"):
        model(x, t)
    with pytest.raises(ValueError, match="t must have shape"):
        model(x, t[:1], y)


def test_model_config_is_resolved_and_json_ready():
    import json
    cfg = model_config("LaMamba-Diff-XL", image_size=512)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["input_size"] == 64 and d["extra"]["name"] == "LaMamba-Diff-XL" and d["cond_dim"] == 1280


def test_decoder_depths_follow_the_released_rule():
    from lamamba.models import model_config

    def decoder(depths):
        return model_config("LaMamba-Diff-S", depths=depths).resolved_decoder_depths()
    assert decoder((2, 2, 2, 0)) == (0, 3, 3, 3)   # an empty deepest stage keeps an empty decoder stage
    assert decoder((2, 0, 2, 0)) == (0, 3, 1, 3)   # an empty stage elsewhere gets one block (SPEC 5.1)
    assert decoder((2, 2, 2, 2)) == (3, 3, 3, 3)
    model = lamamba.create_model("LaMamba-Diff-S", image_size=16, latent_downsample=1, in_channels=1, num_classes=0,
                                 embed_dim=8, cond_dim=16, num_heads=2, window_size=4, depths=(1, 0, 1, 0))
    assert [len(stage.blocks) for stage in model.layers_up] == [0, 2, 1, 2]


@pytest.mark.parametrize("rank,align", [(1, 8), (3, 8), (6, 8), (8, 8), (20, 8), (6, None)])
def test_dt_projection_is_the_per_direction_einsum(rank, align):
    """The padded per-direction product equals the einsum it replaces, values and both gradients (float64)."""
    from lamamba.models.lamamba import dt_projection

    g = torch.Generator().manual_seed(rank)
    x_dbl = torch.randn(3, 10, 4, rank + 2, dtype=torch.float64, generator=g, requires_grad=True)
    dt_raw = x_dbl[..., :rank]                      # a strided view, as the model's split gives it
    weight = torch.randn(4, 5, rank, dtype=torch.float64, generator=g, requires_grad=True)
    out = dt_projection(dt_raw, weight, align)  # align 8: the CUDA padding, here on the CPU
    expected = torch.einsum("blkr,kdr->blkd", dt_raw, weight)
    assert out.shape == expected.shape == (3, 10, 4, 5) and out.stride(-1) == 1
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    dout = torch.randn(out.shape, dtype=torch.float64, generator=g)
    grads = torch.autograd.grad(out, (x_dbl, weight), dout)
    expected_grads = torch.autograd.grad(expected, (x_dbl, weight), dout)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
