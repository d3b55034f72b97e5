"""Built-in datasets that work offline: scikit-learn's ``digits`` and Fashion-MNIST from its Debian package.

Both are small grey-scale sets for quick end-to-end runs on a CPU or a single GPU; they yield
``(image (channels, size, size) in [-1, 1], label int64)`` like the image-folder dataset.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .transforms import hflip

__all__ = ["DigitsDataset", "FashionMNISTDataset", "read_idx", "FASHION_MNIST_DIR", "FASHION_MNIST_ENV"]

FASHION_MNIST_ENV = "LAMAMBA_FASHION_MNIST"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where `apt-get install dataset-fashion-mnist` puts it
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# IDX format (LeCun et al., the MNIST file format): two zero bytes, a type code, the number of dimensions,
# then one big-endian uint32 per dimension, then the data in big-endian C order.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped, detected from its first bytes) into a numpy array."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_TYPES:
        raise ValueError(f"{str(path)!r} is not an IDX file (bad magic number {data[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{str(path)!r}: IDX header promises shape {shape} ({expected} bytes), file has {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (grey repeated as RGB), got {channels}")


class _InMemoryImages(Dataset):
    """Shared item logic: images kept as one tensor, optional flip, grey repeated to 3 channels if asked."""

    images: torch.Tensor  # (N, 1, H, W), float32 in [-1, 1] or uint8
    labels: torch.Tensor  # (N,) int64
    class_names: list[str]
    channels: int
    flip_p: float

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def _pixels(self, index: int) -> torch.Tensor:
        return self.images[index].clone()  # never hand out a view of the stored data

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._pixels(index)
        if self.flip_p > 0 and torch.rand(()).item() < self.flip_p:
            x = hflip(x)
        if self.channels == 3:
            x = x.expand(3, -1, -1)
        return x.contiguous(), self.labels[index]


class DigitsDataset(_InMemoryImages):
    """scikit-learn's ``load_digits``: 1,797 real 8x8 hand-written digits (UCI), values 0..16, 10 classes.

    Pixels are scaled to [-1, 1] (``v / 8 - 1``) and upsampled to ``image_size`` with bilinear interpolation
    (half-pixel centres). We chose bilinear over nearest because nearest turns every source pixel into a flat
    block with hard edges, a texture no digit has; bilinear gives smooth strokes and, being a convex
    combination, stays inside [-1, 1] (bicubic would overshoot and need clipping).

    The held-out test split is deterministic and stratified: ``round(test_fraction * n_c)`` images of each
    class ``c``, chosen by a fixed permutation (numpy ``default_rng(seed)``); ``split="all"`` takes everything.
    """

    def __init__(
        self,
        image_size: int = 16,
        *,
        split: str = "train",
        test_fraction: float = 0.1,
        seed: int = 0,
        channels: int = 1,
        flip_p: float = 0.0,
    ) -> None:
        from sklearn.datasets import load_digits  # the data ships inside scikit-learn: no download

        _check_channels(channels)
        if split not in ("train", "test", "all"):
            raise ValueError(f"digits split must be 'train', 'test' or 'all', got {split!r}")
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
        if image_size < 8:
            raise ValueError(f"digits are 8x8; image_size must be >= 8, got {image_size}")
        digits = load_digits()
        targets = digits.target.astype(np.int64)
        in_test = np.zeros(len(targets), dtype=bool)
        rng = np.random.default_rng(seed)
        for c in range(10):
            members = np.flatnonzero(targets == c)
            in_test[rng.permutation(members)[: round(test_fraction * len(members))]] = True
        keep = {"train": ~in_test, "test": in_test, "all": np.ones_like(in_test)}[split]
        if not keep.any():
            raise ValueError("the digits test split is empty; pass test_fraction > 0")
        x = torch.from_numpy(digits.images[keep].astype(np.float32))[:, None] / 8.0 - 1.0  # (N, 1, 8, 8)
        if image_size != 8:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.images, self.labels = x, torch.from_numpy(targets[keep])
        self.class_names = [str(c) for c in range(10)]
        self.image_size, self.channels, self.flip_p, self.split = image_size, channels, flip_p, split

    def __repr__(self) -> str:
        return f"DigitsDataset(split={self.split!r}, {len(self)} images, size={self.image_size})"


class FashionMNISTDataset(_InMemoryImages):
    """Fashion-MNIST (Xiao et al. 2017): 28x28 grey clothing images, 10 classes, 60,000 train / 10,000 test.

    Read from the gzipped IDX files of the Debian package ``dataset-fashion-mnist``. The directory is
    ``root``, else the environment variable ``LAMAMBA_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``.
    ``image_size`` 32 pads 2 pixels on every side with -1 (the black background), giving a size that
    halves cleanly through a U-Net; 28 keeps the originals.
    """

    _FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

    def __init__(
        self,
        image_size: int = 28,
        *,
        split: str = "train",
        root: str | os.PathLike | None = None,
        channels: int = 1,
        flip_p: float = 0.0,
    ) -> None:
        _check_channels(channels)
        if split not in self._FILES:
            raise ValueError(f"fashion-mnist split must be 'train' or 'test', got {split!r}")
        if image_size not in (28, 32):
            raise ValueError(f"fashion-mnist image_size must be 28 (original) or 32 (padded), got {image_size}")
        self.root = Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
        images = read_idx(self._find(self._FILES[split][0]))
        labels = read_idx(self._find(self._FILES[split][1]))
        if images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise ValueError(f"{self.root}: unexpected Fashion-MNIST shapes {images.shape} and {labels.shape}")
        self.images = torch.from_numpy(images.copy())[:, None]  # (N, 1, 28, 28) uint8, converted per item
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.class_names = list(FASHION_MNIST_CLASSES)
        self.image_size, self.channels, self.flip_p, self.split = image_size, channels, flip_p, split

    def _find(self, stem: str) -> Path:
        for name in (stem + ".gz", stem):
            if (self.root / name).is_file():
                return self.root / name
        raise FileNotFoundError(
            f"Fashion-MNIST file {stem}.gz not found in {str(self.root)!r}. Install it with "
            f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or point the argument root / the "
            f"environment variable {FASHION_MNIST_ENV} at a directory holding the four IDX files"
        )

    def _pixels(self, index: int) -> torch.Tensor:
        x = self.images[index].float().div_(127.5).sub_(1.0)
        pad = (self.image_size - 28) // 2
        return F.pad(x, (pad, pad, pad, pad), value=-1.0) if pad else x

    def __repr__(self) -> str:
        return (f"FashionMNISTDataset(split={self.split!r}, {len(self)} images, size={self.image_size}, "
                f"root={str(self.root)!r})")
