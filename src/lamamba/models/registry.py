"""Model registry: the paper's LaMamba-Diff sizes (Table 1, SPEC Part A) and the DiT baselines.

``create_model(name, image_size=256, num_classes=1000, in_channels=4, **overrides)`` builds any of them;
``image_size`` is in pixels and the model's input side is ``image_size // latent_downsample`` (8 for the
Stable Diffusion VAE; pass ``latent_downsample=1`` for pixel-space models). Overrides change any field of
the model's config (``LaMambaConfig`` / ``DiTConfig``), e.g. the ablation switches of Tables 5-7.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable

import torch.nn as nn

from lamamba.models.dit import DiT, DiTConfig
from lamamba.models.lamamba import LaMambaConfig, LaMambaDiff
from lamamba.models.layers import check_fields

# name -> (model class, config class, preset)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], type, dict[str, Any]]] = {}


def _register(name: str, cls: Callable[..., nn.Module], config_cls: type, **preset: Any) -> None:
    _REGISTRY[name] = (cls, config_cls, preset)


# LaMamba-Diff (Table 1; conditioning widths from the paper's text; heads chosen so that the first stage
# has head size 16, XL from the authors' script)
_register("LaMamba-Diff-S", LaMambaDiff, LaMambaConfig, embed_dim=96, depths=(2, 2, 2, 0), bottleneck_depth=1,
          cond_dim=192, num_heads=6)
_register("LaMamba-Diff-B", LaMambaDiff, LaMambaConfig, embed_dim=192, depths=(2, 2, 2, 0), bottleneck_depth=1,
          cond_dim=384, num_heads=12)
_register("LaMamba-Diff-L", LaMambaDiff, LaMambaConfig, embed_dim=256, depths=(2, 2, 2, 2), bottleneck_depth=2,
          cond_dim=1024, num_heads=16)
_register("LaMamba-Diff-XL", LaMambaDiff, LaMambaConfig, embed_dim=320, depths=(2, 2, 2, 2), bottleneck_depth=2,
          cond_dim=1280, num_heads=16)

# DiT baselines (Peebles & Xie 2023, Table 1)
for _size, (_d, _depth, _heads) in {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16),
                                    "XL": (1152, 28, 16)}.items():
    for _p in (2, 4, 8):
        _register(f"DiT-{_size}/{_p}", DiT, DiTConfig, hidden_size=_d, depth=_depth, num_heads=_heads,
                  patch_size=_p)


def list_models() -> list[str]:
    """Names accepted by ``create_model``."""
    return list(_REGISTRY)


def model_config(name: str, *, image_size: int = 256, num_classes: int = 1000, in_channels: int = 4,
                 latent_downsample: int = 8, **overrides: Any):
    """The resolved config dataclass that ``create_model`` would build (no weights allocated)."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(_REGISTRY)}")
    check_fields(name, positive=dict(image_size=image_size, latent_downsample=latent_downsample,
                                     in_channels=in_channels), non_negative=dict(num_classes=num_classes))
    if image_size % latent_downsample:
        raise ValueError(f"image_size {image_size} is not divisible by the autoencoder's downsampling "
                         f"factor {latent_downsample}")
    _, config_cls, preset = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {name}; valid: {sorted(fields)}")
    values = dict(preset, input_size=image_size // latent_downsample, in_channels=in_channels,
                  num_classes=num_classes, **overrides)
    for key in ("depths", "decoder_depths"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    values["extra"] = dict(values.get("extra") or {}, name=name, image_size=image_size,
                           latent_downsample=latent_downsample)
    config = config_cls(**values)
    config.validate()
    return config


def create_model(name: str, *, image_size: int = 256, num_classes: int = 1000, in_channels: int = 4,
                 latent_downsample: int = 8, **overrides: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("LaMamba-Diff-XL", image_size=512)``.

    ``num_classes=0`` builds an unconditional model; the classifier-free-guidance null class is index
    ``num_classes``. Unknown names, options or impossible sizes raise ``ValueError``.
    """
    config = model_config(name, image_size=image_size, num_classes=num_classes, in_channels=in_channels,
                          latent_downsample=latent_downsample, **overrides)
    return _REGISTRY[name][0](config)


def model_from_config(config: dict) -> nn.Module:
    """Rebuild a model from ``model.config.to_dict()`` (e.g. a checkpoint's config.json)."""
    config = dict(config)
    extra = dict(config.get("extra") or {})
    name = extra.get("name")
    if name not in _REGISTRY:
        raise ValueError(f"config names no registered model (extra.name={name!r})")
    _, config_cls, _ = _REGISTRY[name]
    for key in ("depths", "decoder_depths"):
        if isinstance(config.get(key), list):
            config[key] = tuple(config[key])
    return _REGISTRY[name][0](config_cls(**config))

