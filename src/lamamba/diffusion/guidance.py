"""Classifier-free guidance inputs (Ho & Salimans 2022) for samplers that know nothing about guidance.

The model's ``forward_with_cfg(x, t, y, cfg_scale)`` takes a doubled batch: the first half carries the
class labels, the second half the null label ``num_classes``. It must run the network on the first half
of ``x`` duplicated (the samplers add independent noise to the two halves, so only the first half is a
valid x_t), form ``eps = eps_uncond + cfg_scale * (eps_cond - eps_uncond)`` and return the output for
the whole doubled batch, guided ε in both halves. Sampling with guidance is therefore::

    noise = torch.randn(n, 4, 32, 32, generator=g, device=device)
    samples = diffusion.sample(
        model.forward_with_cfg, None, cfg_noise(noise),
        model_kwargs=cfg_model_kwargs(y, num_classes=1000, cfg_scale=4.0), generator=g,
    )
    samples = cfg_first_half(samples)  # (n, 4, 32, 32), the guided samples
"""
from __future__ import annotations

import torch
from torch import Tensor


def cfg_model_kwargs(y: Tensor, num_classes: int, cfg_scale: float) -> dict[str, Tensor | float]:
    """``{"y": [y, null...], "cfg_scale": cfg_scale}`` for ``forward_with_cfg``; null label = ``num_classes``."""
    if not isinstance(y, Tensor) or y.ndim != 1 or y.is_floating_point():
        raise ValueError("y must be a 1-D integer tensor of class labels")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 for guidance, got {num_classes}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"class labels must lie in [0, {num_classes - 1}] ({num_classes} is the null label)")
    return {"y": torch.cat([y, torch.full_like(y, num_classes)]), "cfg_scale": float(cfg_scale)}


def cfg_noise(noise: Tensor) -> Tensor:
    """The initial noise for a doubled guidance batch: the same noise in both halves."""
    return torch.cat([noise, noise])


def cfg_first_half(samples: Tensor) -> Tensor:
    """The conditional (guided) half of a doubled batch."""
    if samples.shape[0] % 2:
        raise ValueError(f"a guidance batch has an even size, got {samples.shape[0]}")
    return samples[: samples.shape[0] // 2]
