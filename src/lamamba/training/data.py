"""The training data of a run: the dataset, its per-rank loader and, for latent diffusion, the VAE.

Three cases (SPEC 7.2-7.3):

* a latent directory written by ``lamamba extract-latents``: the model trains on its latents (fast path);
* images (a built-in dataset or an image folder) with ``--vae``: each batch is encoded on the fly with a fresh
  posterior sample, ``z = 0.18215 * (mu + sigma * eps)`` as DiT;
* images without a VAE: pixel-space diffusion (``latent_downsample = 1``, channels from the dataset).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lamamba.data import LatentDataset, build_dataloader, build_dataset, is_latent_dir
from lamamba.distributed import DistEnv
from lamamba.training.config import TrainConfig

__all__ = ["TrainingData", "build_training_data", "forever"]


@dataclass
class TrainingData:
    """A run's data: ``loader`` yields ``(x, y)`` per rank; ``encode`` maps pixels to the model's space."""

    dataset: Any
    loader: Any
    encode: Callable[[Tensor], Tensor] | None  # None: the loader already yields model-space tensors
    vae: Any                                   # the VAE for on-the-fly training (decodes sample grids too)
    info: dict[str, Any]                       # JSON description, recorded in the run and checkpoint configs

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``create_model`` that the data determines."""
        return dict(image_size=self.info["image_size"], num_classes=self.info["num_classes"],
                    in_channels=self.info["channels"], latent_downsample=self.info["latent_downsample"])


def build_training_data(config: TrainConfig, env: DistEnv, per_rank_batch: int) -> TrainingData:
    """Dataset, resumable per-rank loader (seeded with ``config.seed``) and optional VAE for ``config``."""
    vae = None
    dataset = build_dataset(config.data, image_size=config.image_size,
                            **({"channels": 3} if config.vae and not is_latent_dir(config.data) else {}))
    if isinstance(dataset, LatentDataset):
        if config.vae:
            raise ValueError(f"{config.data} already holds latents; drop --vae (decoding uses {dataset.vae_name})")
        latent = {"vae": dataset.vae_name, "scale": dataset.scale, "shift": dataset.meta.get("shift", 0.0),
                  "downsample": dataset.source_image_size // dataset.image_size, "channels": dataset.channels}
        info = _info(config, dataset, image_size=dataset.source_image_size, image_channels=3, latent=latent)
    elif config.vae:
        from lamamba.autoencoder import load_vae

        vae = load_vae(config.vae, device=env.device)
        latent = {"vae": config.vae, "scale": vae.scale, "shift": vae.shift, "downsample": vae.downsample,
                  "channels": vae.latent_channels}
        info = _info(config, dataset, image_size=dataset.image_size, image_channels=dataset.channels, latent=latent)
    else:
        info = _info(config, dataset, image_size=dataset.image_size, image_channels=dataset.channels, latent=None)
    loader = build_dataloader(dataset, per_rank_batch, seed=config.seed, rank=env.rank,
                              world_size=env.world_size, num_workers=config.num_workers)
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} items give no full batch of {per_rank_batch} per rank on "
                         f"{env.world_size} rank(s); lower --global-batch-size")
    encode = (lambda x: vae.encode(x, sample=True)) if vae is not None else None
    return TrainingData(dataset, loader, encode, vae, info)


def _info(config: TrainConfig, dataset, *, image_size: int, image_channels: int, latent: dict | None) -> dict:
    return {
        "data": config.data,
        "dataset": repr(dataset),
        "num_items": len(dataset),
        "num_classes": int(dataset.num_classes),
        "class_names": list(getattr(dataset, "class_names", [])),
        "space": "latent" if latent else "pixel",
        "image_size": int(image_size),            # pixel side of the images the model generates
        "image_channels": int(image_channels),    # channels of those images
        "channels": int(latent["channels"] if latent else image_channels),  # the model's input channels
        "latent_downsample": int(latent["downsample"] if latent else 1),
        "latent": latent,
    }


def forever(loader) -> Iterator[Any]:
    """Batches across epochs (the resumable loader moves to the next epoch by itself)."""
    while True:
        yield from loader
