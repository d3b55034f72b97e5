"""Gaussian diffusion in the ADM / improved-DDPM formulation (Ho et al. 2020; Nichol & Dhariwal 2021).

The model predicts the noise ε and, with ``learn_sigma``, a per-element value ``v`` in [-1, 1] that
interpolates the reverse-process log variance between the two natural bounds β̃_t and β_t ("learned
range"). Training minimises ``MSE(ε) + L_vb`` with the mean frozen inside ``L_vb`` (the "hybrid"
objective of improved DDPM). A diffusion may keep only a subset of the training steps ("respacing"):
its betas are recomputed from the kept ᾱ's and its step indices are mapped back to the original
timesteps before every model call, so the model always sees timesteps in the training range.

Schedule arithmetic is float64 (numpy on the host, then float64 tables cached once per device);
coefficients are gathered per step and cast to the data's dtype.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .samplers import SamplerMixin
from .schedule import get_beta_schedule, space_timesteps

Model = Callable[..., Tensor]  # model(x_t, t, **model_kwargs) -> (B, C or 2C, ...)

# Per-timestep float64 arrays mirrored to each device the diffusion is used on.
_TABLES = (
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "log_betas",
    "fixed_large_variance",
)


class GaussianDiffusion(SamplerMixin):
    """A discrete-time Gaussian diffusion with ε-prediction and fixed-large or learned-range variance.

    Args:
        betas: ``(T,)`` noise schedule, each in (0, 1].
        learn_sigma: the model returns ``2C`` channels (ε, then the variance values ``v``); otherwise
            ``C`` channels (ε) and the reverse variance is fixed to β_t (β̃_1 at t = 0, as ADM).
        timestep_map: the original (training) timestep of each of the ``T`` steps; the model is
            called with these. Defaults to ``0..T-1``.

    Schedule attributes (``betas``, ``alphas_cumprod``, ``posterior_variance``, ...) are float64
    numpy arrays with the names and meanings of the ADM code base.
    """

    def __init__(
        self,
        betas: Sequence[float] | np.ndarray,
        *,
        learn_sigma: bool = True,
        timestep_map: Sequence[int] | np.ndarray | None = None,
    ):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0 or not np.all((betas > 0) & (betas <= 1)):
            raise ValueError("betas must be a non-empty 1-D sequence with every value in (0, 1]")
        self.betas = betas
        self.learn_sigma = bool(learn_sigma)
        self.num_timesteps = T = len(betas)
        self.timestep_map = np.asarray(np.arange(T) if timestep_map is None else timestep_map, dtype=np.int64)
        if self.timestep_map.shape != (T,):
            raise ValueError(f"timestep_map must have one entry per step ({T}), got shape {self.timestep_map.shape}")

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        # q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I)  (Ho et al. 2020, Eq. 4), and its inverse for x_0.
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # q(x_{t-1} | x_t, x_0) = N(c1 x_0 + c2 x_t, β̃_t I)  (Ho et al. 2020, Eq. 6-7).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0: its log is clipped to log β̃_1 (β_0 for a single-step diffusion, where β̃_1 does not exist).
        floor = self.posterior_variance[1] if T > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(floor, self.posterior_variance[1:]))
        self.log_betas = np.log(betas)
        self.fixed_large_variance = np.append(floor, betas[1:])

        self._device_tables: dict[torch.device, dict[str, Tensor]] = {}

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(num_timesteps={self.num_timesteps}, learn_sigma={self.learn_sigma}, "
            f"model timesteps {self.timestep_map[0]}..{self.timestep_map[-1]})"
        )

    # ---------------------------------------------------------------------------------------------
    # Tables and checks
    # ---------------------------------------------------------------------------------------------

    def _tables(self, device: torch.device) -> dict[str, Tensor]:
        tables = self._device_tables.get(device)
        if tables is None:
            dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
            tables = {name: torch.as_tensor(getattr(self, name), dtype=dtype, device=device) for name in _TABLES}
            tables["timestep_map"] = torch.as_tensor(self.timestep_map, device=device)
            self._device_tables[device] = tables
        return tables

    def _extract(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        """Gather table ``name`` at steps ``t`` (B,) as ``x.dtype``, shaped to broadcast over ``x``."""
        return self._tables(t.device)[name][t].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    def _model_timesteps(self, t: Tensor) -> Tensor:
        """Original (training) timesteps of the step indices ``t``."""
        return self._tables(t.device)["timestep_map"][t]

    @staticmethod
    def _check_timesteps(t: Tensor, x: Tensor) -> None:
        if not isinstance(t, Tensor) or t.ndim != 1 or t.shape[0] != x.shape[0] or t.is_floating_point():
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"t must be an integer tensor of shape ({x.shape[0]},) (one step per sample), got {got}")

    def _split_output(self, output: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor | None]:
        """Split a model output into (ε, v); v is None for fixed variance."""
        c = x_t.shape[1]
        channels = 2 * c if self.learn_sigma else c
        if output.shape != (x_t.shape[0], channels, *x_t.shape[2:]):
            raise ValueError(
                f"model output has shape {tuple(output.shape)}, expected {(x_t.shape[0], channels, *x_t.shape[2:])}: "
                f"with learn_sigma={self.learn_sigma} the model must return "
                + ("2C channels (eps, then variance values)" if self.learn_sigma else "C channels (eps)")
                + "; create the diffusion with learn_sigma matching the model"
            )
        if self.learn_sigma:
            eps, v = output.split(c, dim=1)
            return eps, v
        return output, None

    # ---------------------------------------------------------------------------------------------
    # Forward process
    # ---------------------------------------------------------------------------------------------

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """Draw ``x_t ~ q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I)``, using ``noise`` if given."""
        self._check_timesteps(t, x0)
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
        mean_coef = self._extract("sqrt_alphas_cumprod", t, x0)
        return mean_coef * x0 + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log variance of the posterior ``q(x_{t-1} | x_t, x_0)``."""
        self._check_timesteps(t, x_t)
        mean = self._extract("posterior_mean_coef1", t, x_t) * x0 + self._extract("posterior_mean_coef2", t, x_t) * x_t
        variance = self._extract("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self._extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    # ---------------------------------------------------------------------------------------------
    # Reverse process
    # ---------------------------------------------------------------------------------------------

    def p_mean_variance(
        self,
        model: Model,
        x_t: Tensor,
        t: Tensor,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = False,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Run the model and return ``p(x_{t-1} | x_t)``: ``mean``, ``variance``, ``log_variance``,
        ``pred_xstart`` (the x_0 estimate) and ``eps`` (the noise estimate consistent with
        ``pred_xstart``, i.e. recomputed if ``denoised_fn`` or ``clip_denoised`` changed it).

        ``t`` holds step indices of this diffusion; the model receives the original timesteps.
        """
        self._check_timesteps(t, x_t)
        output = model(x_t, self._model_timesteps(t), **(model_kwargs or {}))
        return self._p_from_output(output, x_t, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn)

    def _p_from_output(
        self,
        output: Tensor,
        x_t: Tensor,
        t: Tensor,
        *,
        clip_denoised: bool = False,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, Tensor]:
        eps, v = self._split_output(output, x_t)
        if v is not None:
            # Learned range (Nichol & Dhariwal 2021, Eq. 15): log σ² = f log β_t + (1 - f) log β̃_t, f = (v+1)/2.
            frac = (v + 1) / 2
            max_log = self._extract("log_betas", t, x_t)
            min_log = self._extract("posterior_log_variance_clipped", t, x_t)
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            variance = self._extract("fixed_large_variance", t, x_t).expand_as(x_t)
            log_variance = torch.log(variance)

        sqrt_recip = self._extract("sqrt_recip_alphas_cumprod", t, x_t)
        sqrt_recipm1 = self._extract("sqrt_recipm1_alphas_cumprod", t, x_t)
        pred_xstart = sqrt_recip * x_t - sqrt_recipm1 * eps  # x_0 = (x_t - sqrt(1 - ᾱ) ε) / sqrt(ᾱ)
        if denoised_fn is not None or clip_denoised:
            if denoised_fn is not None:
                pred_xstart = denoised_fn(pred_xstart)
            if clip_denoised:
                pred_xstart = pred_xstart.clamp(-1, 1)
            eps = (sqrt_recip * x_t - pred_xstart) / sqrt_recipm1
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    # ---------------------------------------------------------------------------------------------
    # Training objective
    # ---------------------------------------------------------------------------------------------

    def training_losses(
        self,
        model: Model,
        x0: Tensor,
        t: Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample losses ``{"loss", "mse", "vb"}``, each of shape (B,).

        ``mse`` is the mean over all non-batch dimensions of ``(ε - ε̂)²``. With ``learn_sigma``,
        ``vb`` is the variational-bound term in bits per dimension computed with ε̂ detached, so only
        the variance values receive its gradient (Nichol & Dhariwal 2021, Sec. 3.1): KL(q(x_{t-1} |
        x_t, x_0) || p(x_{t-1} | x_t)) for t > 0 and the discretised-Gaussian decoder NLL for t = 0.
        ``loss = mse + vb`` (``vb`` is zero with fixed variance).
        """
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, self._model_timesteps(t), **(model_kwargs or {}))
        eps, v = self._split_output(output, x_t)
        mse = mean_flat((noise - eps) ** 2)
        if v is None:
            vb = torch.zeros_like(mse)
        else:
            frozen = self._p_from_output(torch.cat([eps.detach(), v], dim=1), x_t, t)
            vb = self._vb_bits_per_dim(x0, x_t, t, frozen)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    def _vb_bits_per_dim(self, x0: Tensor, x_t: Tensor, t: Tensor, p: dict[str, Tensor]) -> Tensor:
        """The term L_{t-1} of the variational bound (Ho et al. 2020, Eq. 5) in bits/dim, shape (B,)."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, p["mean"], p["log_variance"]))
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, means=p["mean"], log_scales=0.5 * p["log_variance"]))
        return torch.where(t == 0, nll, kl) / math.log(2.0)

    # ---------------------------------------------------------------------------------------------
    # Respacing
    # ---------------------------------------------------------------------------------------------

    def respace(self, use_timesteps: Iterable[int]) -> GaussianDiffusion:
        """A diffusion over the subset ``use_timesteps`` of this one's steps.

        Keeps ᾱ of the kept steps exactly (β'_i = 1 - ᾱ_{k_i} / ᾱ_{k_{i-1}}) and composes the timestep
        map, so the model still receives original timesteps. Respacing a respaced diffusion works.
        """
        kept = sorted({int(i) for i in use_timesteps})
        if not kept or kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise ValueError(f"use_timesteps must be a non-empty set of step indices in [0, {self.num_timesteps - 1}]")
        alphas_cumprod = self.alphas_cumprod[kept]
        betas = 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])
        return GaussianDiffusion(betas, learn_sigma=self.learn_sigma, timestep_map=self.timestep_map[kept])


def create_diffusion(
    timestep_respacing: str | int | Sequence[int] | None = None,
    noise_schedule: str = "linear",
    learn_sigma: bool = True,
    diffusion_steps: int = 1000,
) -> GaussianDiffusion:
    """Build the diffusion used for training (``timestep_respacing=None``) or respaced sampling.

    ``timestep_respacing``: None or "" for all ``diffusion_steps`` steps; otherwise a spec accepted by
    :func:`space_timesteps` (``250``, ``"250"``, ``"10,20,30"``, ``"ddim50"``). The defaults are the
    paper's training diffusion: 1000 steps, linear schedule, ε-prediction with learned-range variance.
    """
    diffusion = GaussianDiffusion(get_beta_schedule(noise_schedule, diffusion_steps), learn_sigma=learn_sigma)
    if timestep_respacing is None or (isinstance(timestep_respacing, str) and not timestep_respacing.strip()):
        return diffusion
    return diffusion.respace(space_timesteps(diffusion_steps, timestep_respacing))
