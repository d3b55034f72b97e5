"""Gaussian diffusion (ADM / improved-DDPM formulation), respacing and samplers.

Training::

    diffusion = create_diffusion()  # 1000 linear steps, eps-prediction, learned-range variance
    t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), device=x0.device)
    loss = diffusion.training_losses(model, x0, t, model_kwargs={"y": y})["loss"].mean()

Sampling (any of "ddpm", "ddim", "dpm++2m", "dpm++2m-sde")::

    x0 = diffusion.sample(model, (n, 4, 32, 32), sampler="ddpm", steps=250, model_kwargs={"y": y})

For classifier-free guidance see :mod:`lamamba.diffusion.guidance`.
"""
from .gaussian_diffusion import GaussianDiffusion, create_diffusion
from .guidance import cfg_first_half, cfg_model_kwargs, cfg_noise
from .losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .samplers import DEFAULT_STEPS, SAMPLERS
from .schedule import NOISE_SCHEDULES, evenly_spaced_timesteps, get_beta_schedule, space_timesteps

__all__ = [
    "DEFAULT_STEPS",
    "NOISE_SCHEDULES",
    "SAMPLERS",
    "GaussianDiffusion",
    "cfg_first_half",
    "cfg_model_kwargs",
    "cfg_noise",
    "create_diffusion",
    "discretized_gaussian_log_likelihood",
    "evenly_spaced_timesteps",
    "get_beta_schedule",
    "mean_flat",
    "normal_kl",
    "space_timesteps",
]
