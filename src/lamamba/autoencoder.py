"""The Stable Diffusion VAE as the latent codec of latent diffusion (SPEC section 7.2).

DiT and LaMamba-Diff train in the latent space of Stable Diffusion's ``AutoencoderKL`` (the "ft-MSE"
decoder, ``stabilityai/sd-vae-ft-mse``): an image ``x`` in [-1, 1] of shape ``(B, 3, H, W)`` becomes a
latent ``(B, 4, H/8, W/8)``. The diffusion model sees ``z = scale * (mu + sigma * eps)`` with
``scale = 0.18215`` (the SD VAE's ``scaling_factor``, which brings latents near unit variance), a fresh
posterior sample each step as in DiT; images come back as ``decode(z / scale)``.

``diffusers`` is an optional dependency (``pip install "lamamba[vae]"``), imported only when a VAE is loaded.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import torch

__all__ = ["DEFAULT_VAE", "VAE", "load_vae"]

DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"


def _chunks(x: torch.Tensor, batch_size: int | None) -> Iterator[torch.Tensor]:
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}")
    step = batch_size or max(len(x), 1)
    for start in range(0, len(x), step):
        yield x[start:start + step]


class VAE:
    """Encode images to scaled latents and decode them back, in batches, without gradients.

    Args:
        model: a ``diffusers.AutoencoderKL`` (any module with the same ``encode``/``decode`` interface).
        scale: latent scale; ``None`` takes the model's ``config.scaling_factor`` (0.18215 for the SD VAEs).
        shift: latent shift subtracted before scaling (``config.shift_factor``; none for the SD VAEs).
        name: where the weights came from (recorded in latent-shard metadata).

    Inputs may live on any device; each batch moves to the VAE's device and dtype, and results come back
    as float32 on the input's device, so a large batch can be decoded from CPU memory piece by piece.
    """

    def __init__(self, model: torch.nn.Module, *, scale: float | None = None, shift: float | None = None,
                 name: str | None = None) -> None:
        config = getattr(model, "config", None)
        self.model = model.eval().requires_grad_(False)
        self.scale = float(scale if scale is not None else getattr(config, "scaling_factor", None) or 0.18215)
        self.shift = float(shift if shift is not None else getattr(config, "shift_factor", None) or 0.0)
        self.name = name
        self.latent_channels = int(getattr(config, "latent_channels", 4))
        # AutoencoderKL halves the resolution in every encoder block but the last (SD: 4 blocks, factor 8).
        blocks = getattr(config, "block_out_channels", None)
        self.downsample = 2 ** (len(blocks) - 1) if blocks else 8

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _check_images(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[-1] % self.downsample or x.shape[-2] % self.downsample:
            raise ValueError(
                f"expected images (B, C, H, W) with H and W divisible by {self.downsample}, got {tuple(x.shape)}"
            )

    @torch.no_grad()
    def posterior(self, x: torch.Tensor, *, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the scaled latent posterior ``q(z | x)``, each ``(B, C, h, w)``."""
        self._check_images(x)
        means, stds = [], []
        for chunk in _chunks(x, batch_size):
            dist = self.model.encode(chunk.to(self.device, self.dtype)).latent_dist
            means.append(((dist.mean.float() - self.shift) * self.scale).to(x.device))
            stds.append((dist.std.float() * self.scale).to(x.device))
        return torch.cat(means), torch.cat(stds)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None,
               batch_size: int | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents; ``sample`` draws from the posterior (DiT), else its mean.

        ``generator``, if given, must live on ``x``'s device.
        """
        mean, std = self.posterior(x, batch_size=batch_size)
        if not sample:
            return mean
        return mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """Scaled latents -> images clamped to [-1, 1]."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")
        images = []
        for chunk in _chunks(z, batch_size):
            chunk = chunk.to(self.device, torch.float32) / self.scale + self.shift
            images.append(self.model.decode(chunk.to(self.dtype)).sample.float().clamp_(-1, 1).to(z.device))
        return torch.cat(images)

    def __repr__(self) -> str:
        return (f"VAE({self.name!r}, scale={self.scale}, shift={self.shift}, latent_channels={self.latent_channels}, "
                f"downsample={self.downsample}, device={self.device}, dtype={self.dtype})")


def load_vae(
    name_or_path: str | os.PathLike = DEFAULT_VAE,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    scale: float | None = None,
    shift: float | None = None,
    subfolder: str | None = None,
    local_files_only: bool = False,
) -> VAE:
    """Load an ``AutoencoderKL`` from a Hugging Face hub id or a local ``save_pretrained`` directory.

    The authors run the VAE in float32 (SPEC 7.2); ``subfolder="vae"`` reads the VAE of a full pipeline
    repository. Only safetensors weights are loaded (a pickled ``diffusion_pytorch_model.bin`` is refused).
    Raises ``ImportError`` without diffusers and ``FileNotFoundError`` when the weights are neither local nor
    in the hub cache and cannot be downloaded.
    """
    try:
        from diffusers import AutoencoderKL
    except ImportError as error:
        raise ImportError('the VAE needs diffusers: pip install "lamamba[vae]"') from error
    name = os.fspath(name_or_path)
    looks_local = os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
    if looks_local and not os.path.isdir(os.path.expanduser(name)):
        raise FileNotFoundError(f"VAE directory {name!r} does not exist")
    kwargs = {}
    if importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False  # the default needs accelerate and otherwise logs a warning
    try:
        model = AutoencoderKL.from_pretrained(
            os.path.expanduser(name), subfolder=subfolder, torch_dtype=dtype, local_files_only=local_files_only,
            use_safetensors=True, **kwargs,  # never a pickled .bin (it could run code)
        )
    except OSError as error:  # diffusers reports missing files and failed downloads as OSError
        raise FileNotFoundError(
            f"could not load the VAE {name!r}: {error}\nGive a local directory written by save_pretrained, or "
            "run once with network access so the hub cache (~/.cache/huggingface) holds it"
        ) from error
    return VAE(model.to(device), scale=scale, shift=shift, name=name)
