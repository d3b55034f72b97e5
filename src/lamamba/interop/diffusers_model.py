"""Any lamamba model as a diffusers model, so that ``DiTPipeline`` and diffusers' schedulers run it unchanged.

``pip install "lamamba[diffusers]"``. A pipeline directory written by ``lamamba export-diffusers RUN OUT``::

    import lamamba.interop.diffusers_model  # noqa: F401  (diffusers loads components of imported modules only)
    from diffusers import DiTPipeline, DPMSolverMultistepScheduler
    pipe = DiTPipeline.from_pretrained("OUT")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)   # any scheduler
    images = pipe(class_labels=[3, 1], guidance_scale=2.0, num_inference_steps=25).images

Conventions, DiTPipeline's mapped onto ours:

* **Call**: ``transformer(hidden_states, timestep, class_labels).sample`` is the model's output, noise and (with
  learned variance) variance channels, ``(N, 2C, H, W)``; DiTPipeline keeps the first ``C``.
* **Null class**: DiTPipeline labels the unconditional half of a guided batch ``1000``; the wrapper maps
  ``null_class_label`` (1000) to the model's own null index ``num_classes``. Other labels must lie in
  ``[0, num_classes)``. Unconditional models ignore labels.
* **Guidance**: DiTPipeline guides all ``C`` noise channels, as ``lamamba sample`` does by default (the
  released LaMamba-Diff code's convention); DiT's three-channel convention (``--guided-channels 3``) has no
  DiTPipeline equivalent.
* **Pixel-space models** get :class:`PixelSpaceVAE`, the identity "autoencoder" with ``scaling_factor`` 1.
* **Scheduler**: :func:`scheduler_config` gives the run's exact betas to ``DDIMScheduler`` (eta 0, no clipping,
  ``timestep_spacing="trailing"``). DDIMScheduler steps from ``t`` to ``t - T // N`` while ``lamamba sample``'s
  DDIM uses ``N`` evenly spaced steps including 0 and ``T - 1``: the two coincide when ``N = T`` (the test
  compares them there) and differ slightly otherwise.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lamamba.extras import require

require("diffusers", "diffusers", "the diffusers interop")

from diffusers import ConfigMixin, ModelMixin  # noqa: E402
from diffusers.configuration_utils import register_to_config  # noqa: E402
from diffusers.models.autoencoders.vae import DecoderOutput  # noqa: E402
from diffusers.models.modeling_outputs import Transformer2DModelOutput  # noqa: E402

from lamamba.diffusion import get_beta_schedule  # noqa: E402
from lamamba.models import model_from_config  # noqa: E402

__all__ = ["LaMambaTransformer2DModel", "PixelSpaceVAE", "scheduler_config"]

DIT_NULL_CLASS = 1000  # the label DiTPipeline gives the unconditional half of a guided batch


class LaMambaTransformer2DModel(ModelMixin, ConfigMixin):
    """A lamamba model (LaMamba-Diff or a DiT baseline) with the call convention of diffusers' DiT transformer.

    ``model_config`` is the model's ``config.to_dict()``; ``run_info`` the rest of its inference config
    (image size, classes, latent autoencoder, diffusion; kept so that the export converts back losslessly).
    ``sample_size``, ``in_channels`` and ``out_channels`` are derived from the model (DiTPipeline reads them).
    """

    @register_to_config
    def __init__(self, model_config: dict[str, Any], run_info: dict[str, Any] | None = None,
                 null_class_label: int = DIT_NULL_CLASS, sample_size: int | None = None,
                 in_channels: int | None = None, out_channels: int | None = None) -> None:
        super().__init__()
        self.model = model_from_config(model_config)
        derived = {"sample_size": self.model.config.input_size, "in_channels": self.model.in_channels,
                   "out_channels": self.model.out_channels}
        given = {"sample_size": sample_size, "in_channels": in_channels, "out_channels": out_channels}
        wrong = {k: v for k, v in given.items() if v is not None and v != derived[k]}
        if wrong:
            raise ValueError(f"config {wrong} contradicts the model config ({derived}); fix or drop those keys")
        self.register_to_config(**derived)

    @classmethod
    def from_lamamba(cls, model: torch.nn.Module, info: dict[str, Any] | None = None) -> LaMambaTransformer2DModel:
        """Wrap ``model`` (its weights are shared, not copied); ``info`` is its checkpoint's ``config.json``."""
        run_info = {k: v for k, v in (info or {}).items() if k not in ("model", "format")}
        with torch.device("meta"):  # built without memory, then the real model takes its place
            wrapper = cls(model_config=model.config.to_dict(), run_info=run_info)
        wrapper.model = model
        return wrapper.eval()

    @property
    def info(self) -> dict[str, Any]:
        """The lamamba inference config (``config.json`` of a checkpoint) of the wrapped model."""
        return {**(self.config.run_info or {}), "model": dict(self.config.model_config)}

    def _labels(self, class_labels: Tensor | None, n: int, device: torch.device) -> Tensor | None:
        k = self.model.num_classes
        if k == 0:
            return None
        if class_labels is None:
            raise ValueError(f"this model is class-conditional ({k} classes): pass class_labels")
        y = torch.as_tensor(class_labels, device=device).long().reshape(-1).expand(n)
        null = y == self.config.null_class_label
        if bool(((y < 0) | (y >= k))[~null].any()):
            raise ValueError(f"class labels must lie in [0, {k - 1}] or be {self.config.null_class_label} "
                             f"(the unconditional label), got {y.tolist()}")
        return torch.where(null, torch.full_like(y, k), y)

    def forward(self, hidden_states: Tensor, timestep: Tensor | int | float, class_labels: Tensor | None = None,
                return_dict: bool = True) -> Transformer2DModelOutput | tuple[Tensor]:
        """``hidden_states`` (N, C, H, W), ``timestep`` (N,) or a scalar, ``class_labels`` (N,) -> ``.sample``."""
        n = hidden_states.shape[0]
        t = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).expand(n)
        out = self.model(hidden_states, t, self._labels(class_labels, n, hidden_states.device))
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


class PixelSpaceVAE(ModelMixin, ConfigMixin):
    """The identity "autoencoder" of pixel-space models: ``decode(x).sample == x`` (``scaling_factor`` 1)."""

    @register_to_config
    def __init__(self, scaling_factor: float = 1.0) -> None:
        super().__init__()
        if scaling_factor != 1.0:
            raise ValueError("a pixel-space model's decoder is the identity: scaling_factor must be 1")
        # diffusers writes and reads one weight file per model: this scalar (1) is it, and gives .dtype/.device
        self.register_buffer("unit", torch.ones(()))

    def decode(self, z: Tensor, return_dict: bool = True) -> DecoderOutput | tuple[Tensor]:
        return DecoderOutput(sample=z) if return_dict else (z,)


def scheduler_config(diffusion: dict[str, Any]) -> dict[str, Any]:
    """A ``DDIMScheduler`` config (eta 0: deterministic) for a run's ``diffusion`` config, with its exact betas.

    Other schedulers take it too: ``DPMSolverMultistepScheduler.from_config(config)``.
    """
    betas = get_beta_schedule(diffusion.get("noise_schedule", "linear"), int(diffusion.get("diffusion_steps", 1000)))
    return {"num_train_timesteps": len(betas), "trained_betas": betas.tolist(), "clip_sample": False,
            "set_alpha_to_one": True, "steps_offset": 0, "prediction_type": "epsilon",
            "timestep_spacing": "trailing"}
