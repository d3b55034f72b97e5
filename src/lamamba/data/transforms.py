"""Pixel transforms of the DiT / ADM recipe (SPEC section 7.3).

``center_crop`` is ADM's centre crop (Dhariwal & Nichol 2021, ``guided_diffusion/image_datasets.py``), which
DiT and LaMamba-Diff use for ImageNet: repeatedly halve the image with a BOX filter while its short side is
at least twice the target, resize with BICUBIC so the short side equals the target, then crop the centre.
``to_tensor`` maps 8-bit pixels to [-1, 1] exactly as ``ToTensor`` followed by ``Normalize(0.5, 0.5)``.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = ["ImageTransform", "center_crop", "hflip", "to_tensor"]

_MODES = {1: "L", 3: "RGB"}


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM centre crop of ``image`` to ``size x size`` (BOX halving, BICUBIC resize, centre crop)."""
    if size < 1:
        raise ValueError(f"crop size must be a positive integer, got {size}")
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image, channels: int = 3) -> torch.Tensor:
    """PIL image -> float32 tensor ``(channels, H, W)`` in [-1, 1]; ``channels`` 3 (RGB) or 1 (grey)."""
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if image.mode != _MODES[channels]:
        image = image.convert(_MODES[channels])
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    x = torch.from_numpy(array.copy()).permute(2, 0, 1)  # (C, H, W) uint8
    return x.float().div_(127.5).sub_(1.0)


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror a ``(..., H, W)`` tensor left-right."""
    return torch.flip(x, dims=(-1,))


class ImageTransform:
    """ADM centre crop, random horizontal flip with probability ``flip_p``, to [-1, 1] tensor.

    The flip draws from torch's generator, which the resumable loader seeds per item (``data/loader.py``).
    """

    def __init__(self, size: int, *, channels: int = 3, flip_p: float = 0.5) -> None:
        if channels not in _MODES:
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p is a probability in [0, 1], got {flip_p}")
        self.size, self.channels, self.flip_p = size, channels, flip_p

    def __call__(self, image: Image.Image) -> torch.Tensor:
        mode = _MODES[self.channels]  # convert first, as ADM does: palette images must not be resampled
        if image.mode != mode:
            image = image.convert(mode)
        x = to_tensor(center_crop(image, self.size), self.channels)
        if self.flip_p > 0 and torch.rand(()).item() < self.flip_p:
            x = hflip(x)
        return x

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, channels={self.channels}, flip_p={self.flip_p})"
