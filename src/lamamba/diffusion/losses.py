"""Likelihood terms of the variational bound (Ho et al. 2020, Eq. 5 and Sec. 3.3)."""
from __future__ import annotations

import torch
from torch import Tensor


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the first (batch): ``(B, ...) -> (B,)``."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor | float, logvar1: Tensor | float, mean2: Tensor | float, logvar2: Tensor | float) -> Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats; arguments broadcast.

    KL = ½ [log σ₂² − log σ₁² + (σ₁² + (μ₁ − μ₂)²) / σ₂² − 1].
    """
    ref = next((a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, Tensor)), None)
    if ref is None:
        raise ValueError("normal_kl needs at least one tensor argument")
    mean1, logvar1, mean2, logvar2 = (
        torch.as_tensor(a, dtype=ref.dtype, device=ref.device) for a in (mean1, logvar1, mean2, logvar2)
    )
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def discretized_gaussian_log_likelihood(x: Tensor, *, means: Tensor, log_scales: Tensor) -> Tensor:
    """Elementwise log-probability (nats) of 8-bit data ``x`` in [-1, 1] under a discretised Gaussian.

    The 256 pixel values are the centres ``-1 + 2k/255``; each gets the Gaussian mass of its bin of width
    ``2/255``, the two outermost bins extending to ±∞ so the masses sum to one (Ho et al. 2020, Eq. 13).
    ``log_scales`` is the log standard deviation. Uses the exact normal CDF.
    """
    if not x.shape == means.shape == log_scales.shape:
        shapes = f"x {tuple(x.shape)}, means {tuple(means.shape)}, log_scales {tuple(log_scales.shape)}"
        raise ValueError(f"shapes differ: {shapes}")
    inv_std = torch.exp(-log_scales)
    centred = x - means
    upper = inv_std * (centred + 1.0 / 255.0)
    lower = inv_std * (centred - 1.0 / 255.0)
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(X <= upper edge): the lowest bin
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(X >= lower edge): the highest bin
    log_mass = torch.log((torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_mass))

