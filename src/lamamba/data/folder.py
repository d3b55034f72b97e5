"""Image-folder dataset (SPEC section 7.3), without a torchvision dependency.

Layouts:

* class-conditional: ``root/<class>/**/<image>``; labels are the indices of the sorted class-folder names
  (the convention of torchvision's ``ImageFolder``, so ImageNet's ``train/`` gives the usual 1000 labels);
* unconditional: images directly in ``root`` (or anywhere below it with ``conditional=False``); every label
  is 0 and ``num_classes`` is 0, the value the models read as "no class embedding".

Unreadable or corrupt files are detected when first loaded: each is reported once (a logging warning naming
the file) and replaced by the next readable image, so one bad file never stops an epoch. The authors' code
instead sets PIL's process-wide ``LOAD_TRUNCATED_IMAGES``; we do not change global state, so a truncated
file is treated as corrupt.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .transforms import ImageTransform

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
# What PIL raises for files that are not images, are truncated, or are too large to be safe.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _images_below(directory: Path) -> list[str]:
    """All image files below ``directory`` (recursively, hidden entries skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(os.path.join(dirpath, f) for f in filenames if _is_image(f))
    return sorted(found)


class ImageFolderDataset(Dataset):
    """Images under ``root`` -> ``(image (channels, size, size) in [-1, 1], label int64)``.

    Args:
        root: the folder.
        image_size: side of the square output (ADM centre crop).
        channels: 3 for RGB, 1 for grey.
        flip_p: probability of a horizontal flip (0.5 in DiT; 0 for deterministic output).
        conditional: ``None`` decides from the layout (sub-folders present -> one class per sub-folder);
            ``True`` requires class sub-folders; ``False`` takes every image below ``root`` with label 0.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int,
        *,
        channels: int = 3,
        flip_p: float = 0.5,
        conditional: bool | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist or is not a directory")
        self.transform = ImageTransform(image_size, channels=channels, flip_p=flip_p)
        self.image_size, self.channels, self.flip_p = image_size, channels, flip_p

        subdirs = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if conditional is None:
            conditional = bool(subdirs)
        if conditional:
            if not subdirs:
                raise ValueError(f"{str(self.root)!r} has no class sub-folders; "
                                 "pass conditional=False for a flat folder")
            paths, labels = [], []
            for index, name in enumerate(subdirs):
                found = _images_below(self.root / name)
                if not found:
                    raise ValueError(
                        f"class folder {str(self.root / name)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                        "add images or remove the folder"
                    )
                paths += found
                labels += [index] * len(found)
            loose = [f for f in os.listdir(self.root) if _is_image(f)]
            if loose:
                logger.warning("%s: ignoring %d image(s) outside the class sub-folders", self.root, len(loose))
            self.class_names = subdirs
        else:
            paths = _images_below(self.root)
            labels = [0] * len(paths)
            self.class_names = []
        if not paths:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(self.root)!r}")
        self.paths: list[str] = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self._bad: set[int] = set()  # indices found unreadable (per process: each DataLoader worker has its own)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> torch.Tensor | None:
        try:
            with Image.open(self.paths[index]) as image:
                image.load()
                return self.transform(image)
        except _DECODE_ERRORS as error:
            self._bad.add(index)
            logger.warning("skipping unreadable image %s (%s: %s)", self.paths[index], type(error).__name__, error)
            return None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.paths)
        for offset in range(n):  # an unreadable file is replaced by the next readable one
            j = (index + offset) % n
            if j in self._bad:
                continue
            x = self._load(j)
            if x is not None:
                return x, torch.tensor(self.labels[j], dtype=torch.int64)
        raise ValueError(f"none of the {n} images under {str(self.root)!r} can be read (see the warnings above)")

    def __repr__(self) -> str:
        kind = f"{self.num_classes} classes" if self.num_classes else "unconditional"
        return f"ImageFolderDataset({str(self.root)!r}, {len(self)} images, {kind}, {self.transform})"
