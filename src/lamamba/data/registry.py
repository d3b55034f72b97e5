"""One factory for every data source: built-in names, image folders and latent directories."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .builtin import DigitsDataset, FashionMNISTDataset
from .folder import ImageFolderDataset
from .latents import LatentDataset, is_latent_dir

__all__ = ["BUILTIN_DATASETS", "build_dataset"]

# name -> (class, default image size)
BUILTIN_DATASETS: dict[str, tuple[type, int]] = {
    "digits": (DigitsDataset, 16),
    "fashion-mnist": (FashionMNISTDataset, 28),
}


def build_dataset(
    spec: str | os.PathLike,
    *,
    image_size: int | None = None,
    split: str | None = None,
    channels: int | None = None,
    flip_p: float | None = None,
    **kwargs: Any,
) -> Dataset:
    """The dataset named by ``spec``: ``"digits"``, ``"fashion-mnist"``, an image folder or a latent directory.

    Every dataset yields ``(float tensor (channels, image_size, image_size), int64 label)`` and exposes
    ``num_classes``, ``class_names``, ``channels`` and ``image_size`` (the side of what it yields: for latents,
    the latent side; ``image_size`` given here may be either that or the pixel side they were extracted at).

    Defaults: built-ins use their own size (digits 16, fashion-mnist 28), one channel and no flip; folders
    need ``image_size`` and use RGB with flip 0.5 (DiT); latents flip 0.5 between the stored mirrors.
    ``split`` picks a built-in's split ("train" by default); for folders and latents the path is the split.
    Other keyword arguments go to the dataset class (e.g. ``test_fraction``, ``root``, ``conditional``, ``sample``).
    """
    name = os.fspath(spec)
    if name in BUILTIN_DATASETS:
        cls, default_size = BUILTIN_DATASETS[name]
        return cls(image_size or default_size, split=split or "train", channels=channels or 1,
                   flip_p=flip_p or 0.0, **kwargs)
    path = Path(name).expanduser()
    if not path.is_dir():
        choices = ", ".join(repr(n) for n in BUILTIN_DATASETS)
        reason = "is a file" if path.exists() else "is no such directory"
        raise ValueError(f"unknown dataset {name!r} ({reason}); choose one of {choices}, an image folder "
                         "(class sub-folders or flat) or a latent directory written by extract-latents")
    if split is not None:
        raise ValueError(f"split={split!r} applies to built-in datasets; for a folder, pass the split's directory")
    if is_latent_dir(path):
        dataset = LatentDataset(path, flip_p=0.5 if flip_p is None else flip_p, **kwargs)
        if image_size not in (None, dataset.image_size, dataset.source_image_size):
            raise ValueError(f"{name} holds latents of {dataset.source_image_size}px images, not {image_size}px; "
                             "extract latents at that size")
        if channels not in (None, dataset.channels):
            raise ValueError(f"{name} holds {dataset.channels}-channel latents, not {channels}")
        return dataset
    if image_size is None:
        raise ValueError(f"image_size is required for the image folder {name}")
    return ImageFolderDataset(path, image_size, channels=channels or 3, flip_p=0.5 if flip_p is None else flip_p,
                              **kwargs)
