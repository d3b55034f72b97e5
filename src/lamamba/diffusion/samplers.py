"""Sampling loops of :class:`~lamamba.diffusion.GaussianDiffusion`: DDPM, DDIM, DPM-Solver++(2M) and (2M) SDE.

Every loop shares one signature: ``(model, shape, noise=None, *, model_kwargs, clip_denoised,
denoised_fn, progress, generator, device, dtype)`` and returns the final x_0 sample. ``model`` is any
callable ``model(x_t, t, **model_kwargs)`` that receives original (training) timesteps. Randomness
comes only from ``noise`` (the initial x_T) and ``generator`` (which must live on the sampling
device; the SDE solver can take its step noise from ``noise_fn`` instead), so a seeded generator
reproduces a run exactly. ``dtype`` is the dtype of x_T when it is drawn rather than given; the
device defaults to that of ``noise``, else of ``generator``, else CPU.

Classifier-free guidance is the model's business, not the sampler's: pass the model's
``forward_with_cfg`` as ``model`` with a doubled batch built by :mod:`lamamba.diffusion.guidance`
(see :func:`~lamamba.diffusion.guidance.cfg_model_kwargs`) and keep the first half of the result.

The schedule coefficients of the DPM-Solvers are computed once, in float64 on the host, before their loops;
the DDPM/DDIM steps gather theirs from device-resident tables. No loop synchronises with the device.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .schedule import evenly_spaced_timesteps

SAMPLERS = ("ddpm", "ddim", "dpm++2m", "dpm++2m-sde")
DEFAULT_STEPS = {"ddpm": 250, "ddim": 50, "dpm++2m": 20, "dpm++2m-sde": 25}

Model = Callable[..., Tensor]
DenoisedFn = Callable[[Tensor], Tensor]
NoiseFn = Callable[[Sequence[int]], Tensor]


def _initial_noise(
    shape: Sequence[int] | None,
    noise: Tensor | None,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> Tensor:
    """x_T: ``noise`` if given (moved to ``device``), else a standard normal draw of ``shape``."""
    if noise is not None:
        if shape is not None and tuple(shape) != tuple(noise.shape):
            raise ValueError(f"shape {tuple(shape)} differs from noise shape {tuple(noise.shape)}: make them agree")
        return noise if device is None else noise.to(device)
    if shape is None:
        raise ValueError("give the sample shape or the initial noise")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _steps(t_index: int, batch: int, device: torch.device) -> Tensor:
    return torch.full((batch,), t_index, device=device, dtype=torch.long)


def _dpm_grid(alphas_cumprod: Sequence[float], steps: int) -> tuple[list[int], list[float], list[float], list[float]]:
    """DPM-Solver's time grid (noisiest first) and its α, σ and λ = log(α/σ), in float64 on the host."""
    grid = evenly_spaced_timesteps(len(alphas_cumprod), steps)[::-1]
    alpha = [math.sqrt(alphas_cumprod[i]) for i in grid]
    sigma = [math.sqrt(1.0 - alphas_cumprod[i]) for i in grid]
    lam = [math.log(a / s) for a, s in zip(alpha, sigma)]
    return grid, alpha, sigma, lam


class SamplerMixin:
    """Sampling methods; mixed into ``GaussianDiffusion``, whose schedule and ``p_mean_variance`` they use."""

    # ---------------------------------------------------------------------------------------------
    # DDPM: ancestral sampling (Ho et al. 2020, Alg. 2)
    # ---------------------------------------------------------------------------------------------

    def p_sample(
        self,
        model: Model,
        x: Tensor,
        t: Tensor,
        *,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = False,
        denoised_fn: DenoisedFn | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """One ancestral step ``x_{t-1} ~ p(x_{t-1} | x_t)``; no noise is added where ``t == 0``."""
        out = self.p_mean_variance(model, x, t, model_kwargs, clip_denoised, denoised_fn)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        nonzero = (t != 0).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    @torch.no_grad()
    def p_sample_loop(
        self,
        model: Model,
        shape: Sequence[int] | None,
        noise: Tensor | None = None,
        *,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = False,
        denoised_fn: DenoisedFn | None = None,
        progress: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Ancestral sampling over all steps of this (possibly respaced) diffusion."""
        x = _initial_noise(shape, noise, generator, device, dtype)
        for i in tqdm(range(self.num_timesteps - 1, -1, -1), disable=not progress, desc="DDPM"):
            t = _steps(i, x.shape[0], x.device)
            x = self.p_sample(
                model, x, t, model_kwargs=model_kwargs, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                generator=generator,
            )["sample"]
        return x

    # ---------------------------------------------------------------------------------------------
    # DDIM (Song et al. 2021, Eq. 12 and 16)
    # ---------------------------------------------------------------------------------------------

    def ddim_sample(
        self,
        model: Model,
        x: Tensor,
        t: Tensor,
        *,
        eta: float = 0.0,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = False,
        denoised_fn: DenoisedFn | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """One DDIM step from step ``t`` to the previous step of this diffusion; ``eta=0`` is deterministic."""
        if eta < 0:
            raise ValueError(f"eta must be >= 0 (0: deterministic DDIM, 1: DDPM-like), got {eta}")
        out = self.p_mean_variance(model, x, t, model_kwargs, clip_denoised, denoised_fn)
        abar = self._extract("alphas_cumprod", t, x)
        abar_prev = self._extract("alphas_cumprod_prev", t, x)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        eps_coef = torch.sqrt((1 - abar_prev - sigma**2).clamp(min=0))
        sample = out["pred_xstart"] * torch.sqrt(abar_prev) + eps_coef * out["eps"]
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            sample = sample + sigma * noise  # sigma is 0 at the last step (ᾱ_prev = 1)
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    @torch.no_grad()
    def ddim_sample_loop(
        self,
        model: Model,
        shape: Sequence[int] | None,
        noise: Tensor | None = None,
        *,
        eta: float = 0.0,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = False,
        denoised_fn: DenoisedFn | None = None,
        progress: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """DDIM sampling over all steps of this (possibly respaced) diffusion."""
        x = _initial_noise(shape, noise, generator, device, dtype)
        for i in tqdm(range(self.num_timesteps - 1, -1, -1), disable=not progress, desc="DDIM"):
            t = _steps(i, x.shape[0], x.device)
            x = self.ddim_sample(
                model, x, t, eta=eta, model_kwargs=model_kwargs, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                generator=generator,
            )["sample"]
        return x

    # ---------------------------------------------------------------------------------------------
    # DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2)
    # ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def dpm_solver_sample_loop(
        self,
        model: Model,
        shape: Sequence[int] | None,
        noise: Tensor | None = None,
        *,
        steps: int = 20,
        lower_order_final: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = False,
        denoised_fn: DenoisedFn | None = None,
        progress: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Multistep second-order solver of the probability-flow ODE in data prediction; ``steps`` model calls.

        Time grid: restricted to this diffusion's integer steps, the same ``steps`` evenly spaced ones
        (both ends included) that DDPM/DDIM use with ``steps`` steps, so α_t = sqrt(ᾱ_t) and
        σ_t = sqrt(1 - ᾱ_t) are the exact discrete values and no interpolation is needed. With
        λ = log(α/σ) and h = λ_next - λ, each step is

            x_next = (σ_next / σ) x - α_next (e^{-h} - 1) D,

        where D is the model's x_0 estimate (first order, used for the first step) or the 2M
        extrapolation ``D + (D - D_prev) / (2r)``, ``r = h_prev / h``. ``lower_order_final`` makes
        the step into step 0 first order too (steadier with few steps, Lu et al. 2022). A last
        first-order step then goes from step 0 to σ = 0, which returns the x_0 estimate at step 0,
        the same endpoint as DDPM and DDIM.
        """
        return self._dpm_solver_2m(model, shape, noise, steps=steps, eta=0.0, lower_order_final=lower_order_final,
                                   model_kwargs=model_kwargs, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                   progress=progress, generator=generator, device=device, dtype=dtype,
                                   noise_fn=None, desc="DPM-Solver++(2M)")

    # ---------------------------------------------------------------------------------------------
    # DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", SDE variant; midpoint correction)
    # ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def dpm_solver_sde_sample_loop(
        self,
        model: Model,
        shape: Sequence[int] | None,
        noise: Tensor | None = None,
        *,
        steps: int = 20,
        eta: float = 1.0,
        lower_order_final: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = False,
        denoised_fn: DenoisedFn | None = None,
        progress: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        noise_fn: NoiseFn | None = None,
    ) -> Tensor:
        """Multistep second-order solver of the reverse diffusion SDE in data prediction; ``steps`` model calls.

        Same grid, α, σ, λ = log(α/σ) and data prediction D as :meth:`dpm_solver_sample_loop`. The
        reverse SDE with noise scale ``eta`` (0: the probability-flow ODE, 1: the reverse diffusion SDE)
        is linear in x given D; integrating it exactly in λ with D held constant over a step of
        h = λ_next - λ gives

            x_next = (σ_next / σ) e^{-η h} x + α_next (1 - e^{-(1+η) h}) D̂ + σ_next sqrt(1 - e^{-2η h}) z,

        z ~ N(0, I) fresh at every step. D̂ = D at the first step (and, with ``lower_order_final``, at
        the step into step 0), else the midpoint multistep correction
        ``D̂ = D + (D - D_prev) / (2r)``, r = h_prev / h, i.e. the term
        ``0.5 α_next (1 - e^{-(1+η) h}) (D - D_prev) / r`` on top of the first-order step. For a
        single-point data distribution with exact D every step keeps x_t ~ N(α_t x_0, σ_t²) exactly.
        ``eta=0`` is :meth:`dpm_solver_sample_loop` (no noise is drawn then). As there, the last step
        goes from step 0 to σ = 0 (e^{-h} = 0): it returns the x_0 estimate D at step 0, noise-free.

        Randomness: x_T is ``noise`` or drawn from ``generator``; z is ``noise_fn(x.shape)`` if given
        (e.g. one generator per sample, :func:`lamamba.sample.generate`), else drawn from ``generator``.
        ``steps - 1`` noises are drawn, one per step between grid points.
        """
        if eta < 0:
            raise ValueError(f"eta must be >= 0 (0: the DPM-Solver++(2M) ODE, 1: the reverse SDE), got {eta}")
        return self._dpm_solver_2m(model, shape, noise, steps=steps, eta=eta, lower_order_final=lower_order_final,
                                   model_kwargs=model_kwargs, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                   progress=progress, generator=generator, device=device, dtype=dtype,
                                   noise_fn=noise_fn, desc="DPM-Solver++(2M) SDE")

    def _dpm_solver_2m(self, model: Model, shape: Sequence[int] | None, noise: Tensor | None, *, steps: int,
                       eta: float, lower_order_final: bool, model_kwargs: dict[str, Any] | None,
                       clip_denoised: bool, denoised_fn: DenoisedFn | None, progress: bool,
                       generator: torch.Generator | None, device: torch.device | str | None, dtype: torch.dtype,
                       noise_fn: NoiseFn | None, desc: str) -> Tensor:
        """The one loop of both DPM-Solver++(2M) variants (formulas in their docstrings); ``eta=0`` is the ODE:
        its coefficients reduce exactly (e^0 = 1) and no noise is drawn."""
        grid, alpha, sigma, lam = _dpm_grid(self.alphas_cumprod, steps)  # noisiest first

        x = _initial_noise(shape, noise, generator, device, dtype)
        d_prev = None
        for k in tqdm(range(steps), disable=not progress, desc=desc):
            t = _steps(grid[k], x.shape[0], x.device)
            d = self.p_mean_variance(model, x, t, model_kwargs, clip_denoised, denoised_fn)["pred_xstart"]
            if k + 1 < steps:
                h = lam[k + 1] - lam[k]
                if d_prev is None or (lower_order_final and k + 2 == steps):
                    d_hat = d
                else:
                    r = (lam[k] - lam[k - 1]) / h
                    d_hat = d + (d - d_prev) / (2 * r)
                x_coef = (sigma[k + 1] / sigma[k]) * math.exp(-eta * h)  # e^0 = 1 exactly at eta = 0
                d_coef = -alpha[k + 1] * math.expm1(-(1.0 + eta) * h)  # α_next (1 - e^{-(1+η)h})
                x = x_coef * x + d_coef * d_hat
                if eta > 0:
                    z = noise_fn(x.shape) if noise_fn is not None else torch.randn(
                        x.shape, generator=generator, device=x.device, dtype=x.dtype)
                    if z.shape != x.shape:
                        raise ValueError(f"noise_fn gave shape {tuple(z.shape)}, expected {tuple(x.shape)}")
                    x = x + (sigma[k + 1] * math.sqrt(-math.expm1(-2.0 * eta * h))) * z.to(x)
                d_prev = d
        return d  # the step from the last grid point to σ = 0 (e^{-h} = 0, α = 1) is x_0 = D, with no noise

    # ---------------------------------------------------------------------------------------------
    # One entry point
    # ---------------------------------------------------------------------------------------------

    def sample(
        self,
        model: Model,
        shape: Sequence[int] | None,
        noise: Tensor | None = None,
        *,
        sampler: str = "ddpm",
        steps: int | None = None,
        eta: float | None = None,
        model_kwargs: dict[str, Any] | None = None,
        clip_denoised: bool = False,
        denoised_fn: DenoisedFn | None = None,
        progress: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Sample with ``sampler`` ("ddpm", "ddim", "dpm++2m" or "dpm++2m-sde") in ``steps`` model calls.

        ``steps`` defaults to 250 / 50 / 20 / 25. DDPM and DDIM run on this diffusion respaced to ``steps``
        evenly spaced steps (``create_diffusion("250")`` and DDPM with 250 steps are the same sampler);
        DPM-Solver++(2M) and its SDE variant use the same time grid on this diffusion directly. ``eta`` is
        DDIM's (default 0, deterministic) or the SDE solver's (default 1, the reverse diffusion SDE); DDPM
        and DPM-Solver++(2M) ignore it.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: use one of {SAMPLERS}")
        steps = DEFAULT_STEPS[sampler] if steps is None else steps
        common = dict(
            model_kwargs=model_kwargs, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
            progress=progress, generator=generator, device=device, dtype=dtype,
        )
        if sampler == "dpm++2m":
            return self.dpm_solver_sample_loop(model, shape, noise, steps=steps, **common)
        if sampler == "dpm++2m-sde":
            eta = 1.0 if eta is None else eta  # default: the reverse diffusion SDE
            return self.dpm_solver_sde_sample_loop(model, shape, noise, steps=steps, eta=eta, **common)
        respaced = self.respace(evenly_spaced_timesteps(self.num_timesteps, steps))
        if sampler == "ddpm":
            return respaced.p_sample_loop(model, shape, noise, **common)
        eta = 0.0 if eta is None else eta  # default: deterministic DDIM
        return respaced.ddim_sample_loop(model, shape, noise, eta=eta, **common)
