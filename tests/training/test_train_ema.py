"""EMA arithmetic against a naive loop, and gradient checkpointing against the plain model."""
import copy

import pytest
import torch
import torch.nn as nn

import lamamba
from lamamba.training.ema import EMA
from lamamba.training.grad_checkpoint import enable_gradient_checkpointing


def _tiny(**overrides):
    torch.manual_seed(0)
    return lamamba.create_model("LaMamba-Diff-S", image_size=16, in_channels=1, num_classes=10, latent_downsample=1,
                                embed_dim=8, cond_dim=16, num_heads=2, window_size=4, **overrides)


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_naive_recursion(warmup):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    decay = 0.9
    ema = EMA(model, decay, warmup=warmup)
    expected = {k: v.clone() for k, v in model.named_parameters()}  # initialised as a copy
    for n in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        assert ema.current_decay() == pytest.approx(d)
        ema.update()
        for name, p in model.named_parameters():
            expected[name] = d * expected[name] + (1 - d) * p.detach()
    for name, p in ema.model.named_parameters():
        torch.testing.assert_close(p, expected[name], rtol=1e-6, atol=1e-6)
    assert ema.num_updates == 5
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
    # buffers are not averaged: they stay the values copied at construction
    assert torch.equal(ema.model[1].running_mean, torch.zeros(4))


def test_ema_is_float32_copy_and_rejects_bad_decay():
    model = nn.Linear(2, 2).to(torch.bfloat16)
    ema = EMA(model)
    assert ema.model.weight.dtype == torch.float32
    assert ema.model.weight.data_ptr() != model.weight.data_ptr()
    torch.testing.assert_close(ema.model.weight, model.weight.float())
    with pytest.raises(ValueError, match="decay"):
        EMA(model, 1.0)


def test_ema_state_round_trip():
    model = nn.Linear(2, 2)
    ema = EMA(model, 0.5)
    ema.update()
    other = EMA(nn.Linear(2, 2), 0.5)
    other.load_state_dict(ema.state_dict(), ema.num_updates)
    assert other.num_updates == 1 and torch.equal(other.model.weight, ema.model.weight)


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = _tiny(class_dropout_prob=0.0)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # make the zero-initialised layers pass gradients
    ckpt = copy.deepcopy(plain)
    assert enable_gradient_checkpointing(ckpt) == len(ckpt.blocks())
    assert enable_gradient_checkpointing(ckpt) == len(ckpt.blocks())  # idempotent
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(2, 1, 16, 16, generator=g), torch.tensor([3, 700]), torch.tensor([1, 7])
    grads = []
    for model in (plain, ckpt):
        model.train()
        model(x, t, y).square().mean().backward()
        grads.append({k: p.grad for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-6)
    assert ckpt.state_dict().keys() == plain.state_dict().keys()
    ema = EMA(ckpt)  # a deep copy of a checkpointed model works on its own weights
    with torch.no_grad():
        torch.testing.assert_close(ema.model.eval()(x, t, y), ckpt.eval()(x, t, y))


def test_gradient_checkpointing_needs_blocks():
    with pytest.raises(ValueError, match="no block"):
        enable_gradient_checkpointing(nn.Linear(2, 2))
