"""What the evaluator reads: image sets (ADM ``.npz``, image folders, arrays) and statistics files.

An input path is one of:

* an ADM-style ``.npz`` with ``arr_0``: uint8 images (N, H, W, C) or (N, H, W); read in batches
  straight from the zip member, so 50,000 images never sit in memory at once. It may also hold ADM's
  precomputed Inception statistics ``mu``/``sigma`` (pool3) and ``mu_s``/``sigma_s`` (spatial);
* an ``.npz`` holding only ``mu``/``sigma`` (and ``mu_s``/``sigma_s``): ADM statistics without images;
* a statistics file written by ``save_stats`` (``format`` = ``lamamba-eval-stats``);
* a folder, searched recursively for images (sorted paths). The first image fixes the size and the
  channel count (grey if it is grey, else RGB); every other image must have the same size.
"""
from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .inception import INCEPTION_NAME
from .metrics import GaussianStats

__all__ = ["ImageSource", "NpzImages", "FolderImages", "ArrayImages", "FeatureStats", "open_input",
           "save_stats", "load_stats", "IMAGE_EXTENSIONS", "STATS_FORMAT"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
STATS_FORMAT = "lamamba-eval-stats"
STATS_VERSION = 1
_NO_LOGITS = "statistics files keep no per-image logits; pass the images for the Inception Score"


class ImageSource:
    """A set of same-sized uint8 images (N, H, W, C), C in {1, 3}, read in batches."""

    description: str
    num_images: int
    image_shape: tuple[int, int, int]  # (H, W, C)

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[np.ndarray]:
        """Yield uint8 arrays (B, H, W, C) covering the first ``limit`` images (all if None)."""
        raise NotImplementedError


def _as_nhwc(images: np.ndarray, what: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise ValueError(f"{what}: images must be uint8 in [0, 255], got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{what}: images must be (N, H, W, C) with C in (1, 3) or (N, H, W), not {images.shape}")
    return images


class ArrayImages(ImageSource):
    """In-memory images: uint8 (N, H, W[, C]) array/tensor, or a float tensor (N, C, H, W) in [-1, 1].

    Floats are quantised as sample writers do (DiT/ADM): uint8(clamp(127.5 x + 128, 0, 255)),
    so an in-memory evaluation sees the same pixels as one of the saved ``.npz``.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, description: str = "in-memory images"):
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            if images.ndim != 4 or images.shape[1] not in (1, 3):
                raise ValueError(f"float images must be (N, C, H, W) in [-1, 1], got {tuple(images.shape)}")
            images = (images.detach() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        if isinstance(images, torch.Tensor):
            images = images.cpu().numpy()
        self.images = _as_nhwc(np.asarray(images), description)
        self.description = description
        self.num_images = len(self.images)
        self.image_shape = tuple(self.images.shape[1:])

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[np.ndarray]:
        end = self.num_images if limit is None else min(limit, self.num_images)
        for i in range(0, end, batch_size):
            yield self.images[i:min(i + batch_size, end)]


class NpzImages(ImageSource):
    """``arr_0`` of an ``.npz``, streamed from the zip member (stored or deflated) in C order."""

    def __init__(self, path: Path):
        self.path, self.description = path, f"{path} (arr_0)"
        with zipfile.ZipFile(path) as zf, zf.open("arr_0.npy") as f:
            self._header = _read_npy_header(f)
        shape, fortran, dtype = self._header
        if dtype != np.uint8:
            raise ValueError(f"{path}: arr_0 must be uint8 images in [0, 255], got {dtype}")
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
            raise ValueError(f"{path}: arr_0 must be (N, H, W, C) with C in (1, 3) or (N, H, W), got {shape}")
        self.num_images = shape[0]
        self.image_shape = (shape[1], shape[2], shape[3] if len(shape) == 4 else 1)
        self._fortran = fortran

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[np.ndarray]:
        end = self.num_images if limit is None else min(limit, self.num_images)
        if self._fortran:  # rare; cannot be streamed row by row
            with np.load(self.path) as data:
                yield from ArrayImages(data["arr_0"], self.description).batches(batch_size, end)
            return
        row = int(np.prod(self.image_shape))
        with zipfile.ZipFile(self.path) as zf, zf.open("arr_0.npy") as f:
            _read_npy_header(f)
            for i in range(0, end, batch_size):
                b = min(batch_size, end - i)
                buf = f.read(b * row)
                if len(buf) != b * row:
                    raise ValueError(f"{self.path}: arr_0 is truncated ({i + len(buf) // row} of {end} images)")
                yield np.frombuffer(buf, dtype=np.uint8).reshape(b, *self.image_shape)


def _read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


class FolderImages(ImageSource):
    """Images found recursively under a folder, in sorted path order."""

    def __init__(self, path: Path):
        self.path, self.description = path, f"{path} (image folder)"
        self.files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise ValueError(f"{path}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
        first = self._read(self.files[0], mode=None)
        self.mode = "L" if first.shape[-1] == 1 else "RGB"
        self.num_images = len(self.files)
        self.image_shape = first.shape

    @staticmethod
    def _read(file: Path, mode: str | None) -> np.ndarray:
        with Image.open(file) as im:
            if mode is None:
                mode = "L" if im.mode in ("1", "L", "LA") else "RGB"
            return _as_nhwc(np.asarray(im.convert(mode))[None], str(file))[0]

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[np.ndarray]:
        files = self.files[:limit]
        for i in range(0, len(files), batch_size):
            batch = []
            for file in files[i:i + batch_size]:
                img = self._read(file, self.mode)
                if img.shape != self.image_shape:
                    raise ValueError(
                        f"mismatched image sizes in {self.path}: {file} is {img.shape[1]}x{img.shape[0]}, "
                        f"{self.files[0]} is {self.image_shape[1]}x{self.image_shape[0]}; resize or crop "
                        "them to one size first"
                    )
                batch.append(img)
            yield np.stack(batch)


@dataclass
class FeatureStats:
    """What the metrics need from one image set, and where it came from.

    ``pool``: Gaussian of the main features (FID); ``spatial``: of the spatial features (sFID);
    ``pool_features``: (M, D) rows of the main features for precision/recall (all images, or a
    random subset in saved reference files); ``logits``: (N, K) for the Inception Score (not saved).
    """

    network: str
    num_images: int | None
    origin: str
    pool: GaussianStats | None = None
    spatial: GaussianStats | None = None
    pool_features: np.ndarray | None = None
    logits: np.ndarray | None = None
    image_shape: tuple[int, int, int] | None = None
    network_info: dict = field(default_factory=dict)
    logits_note: str | None = None  # why ``logits`` is None, when it is


def save_stats(path: str | Path, stats: FeatureStats) -> None:
    """Write ``stats`` (without logits) as an ``.npz`` with ADM's key names plus our metadata.

    Keys: ``format``, ``version``, ``feature_network`` (the extractor's name), ``feature_network_info``
    (JSON), ``num_images``, ``image_shape``, ``mu``/``sigma`` (pool), ``mu_s``/``sigma_s`` (spatial, if
    any), ``pool_features`` (if any). Strings are stored as 0-d unicode arrays (no pickle).
    """
    if stats.pool is None:
        raise ValueError("nothing to save: the statistics have no pool features")
    arrays = {
        "format": np.array(STATS_FORMAT), "version": np.array(STATS_VERSION),
        "feature_network": np.array(stats.network),
        "feature_network_info": np.array(json.dumps(stats.network_info)),
        "num_images": np.array(-1 if stats.num_images is None else stats.num_images),
        "image_shape": np.array(stats.image_shape or (0, 0, 0)),
        "mu": stats.pool.mu, "sigma": stats.pool.sigma,
    }
    if stats.spatial is not None:
        arrays.update(mu_s=stats.spatial.mu, sigma_s=stats.spatial.sigma)
    if stats.pool_features is not None:
        arrays["pool_features"] = stats.pool_features.astype(np.float32)
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"statistics files are .npz; name the output {path.with_suffix('.npz')}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def _stats_from_npz(path: Path, data) -> FeatureStats:
    keys = set(data.files)
    ours = "format" in keys and str(data["format"]) == STATS_FORMAT
    if ours and int(data["version"]) > STATS_VERSION:
        raise ValueError(f"{path}: statistics format version {int(data['version'])} is newer than this code")
    num = int(data["num_images"]) if ours else None
    num = None if num is not None and num < 0 else num
    pool = GaussianStats(data["mu"], data["sigma"], num)
    spatial = GaussianStats(data["mu_s"], data["sigma_s"], num) if {"mu_s", "sigma_s"} <= keys else None
    if ours:
        shape = tuple(int(s) for s in data["image_shape"])
        return FeatureStats(
            network=str(data["feature_network"]), num_images=num, origin=f"statistics file {path}",
            pool=pool, spatial=spatial, image_shape=shape if all(shape) else None,
            pool_features=data["pool_features"] if "pool_features" in keys else None,
            network_info=json.loads(str(data["feature_network_info"])), logits_note=_NO_LOGITS,
        )
    info = {"name": INCEPTION_NAME, "description": "precomputed by ADM's TensorFlow evaluator"}
    return FeatureStats(network=INCEPTION_NAME, num_images=None, origin=f"ADM statistics in {path}",
                        pool=pool, spatial=spatial, network_info=info, logits_note=_NO_LOGITS)


def _read_npz_stats(path: Path) -> tuple[set[str], FeatureStats | None]:
    """(keys, statistics if it holds ``mu``/``sigma``) of an .npz, with errors that name the file.

    A file that is not a zip archive is refused before numpy sees it (numpy would try to unpickle it and
    suggest ``allow_pickle=True``); object arrays are never loaded.
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an .npz archive (a zip of .npy arrays): it is truncated or another "
                         "format; write it with numpy.savez, `lamamba sample --npz` or `lamamba evaluate --make-ref`")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            return keys, (_stats_from_npz(path, data) if {"mu", "sigma"} <= keys else None)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npz file: {e}") from e
    except ValueError as e:
        if "pickle" in str(e) or "Object arrays" in str(e):
            raise ValueError(f"{path} holds object arrays (pickled Python objects), which are never loaded; "
                             "store plain numeric arrays") from None
        raise ValueError(f"{path}: {e}" if str(path) not in str(e) else str(e)) from e


def load_stats(path: str | Path) -> FeatureStats:
    """Read a statistics file from ``save_stats`` or ADM's ``mu``/``sigma`` keys (images are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file not found: {path}")
    keys, stats = _read_npz_stats(path)
    if stats is None:
        raise ValueError(f"{path} holds no statistics (mu, sigma); its keys: {', '.join(sorted(keys))}")
    return stats


def builtin_images(spec: str) -> ArrayImages | None:
    """``"digits"``, ``"fashion-mnist:test"``, ...: a built-in dataset (``lamamba.data``) as images, at the
    size training uses (digits 16 px, Fashion-MNIST 28 px); None if ``spec`` names no built-in dataset."""
    from lamamba.data import BUILTIN_DATASETS, build_dataset

    name, _, split = spec.partition(":")
    if name not in BUILTIN_DATASETS:
        return None
    dataset = build_dataset(name, split=split or "train")
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return ArrayImages(images, description=f"{name} ({split or 'train'} split, {len(dataset)} images)")


def open_input(path: str | Path) -> tuple[ImageSource | None, FeatureStats | None]:
    """Classify an input: (images or None, precomputed statistics or None); at least one is set.

    An image folder, an ``.npz`` (ADM images and/or statistics, or ours; local or on the Hugging Face Hub as
    ``[datasets/]org/name[@revision]/FILE.npz``), or a built-in dataset name (``digits``, ``fashion-mnist``,
    optionally ``:train`` / ``:test``)."""
    if not Path(path).expanduser().exists():
        builtin = builtin_images(str(path))
        if builtin is not None:
            return builtin, None
        if str(path).endswith(".npz"):
            from lamamba.hub.download import download_file, parse_hub_ref

            if parse_hub_ref(str(path)) is not None:
                path = download_file(str(path))  # [datasets/]org/name[@rev]/FILE.npz on the Hub
    path = Path(path).expanduser()
    if path.is_dir():
        return FolderImages(path), None
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path}: expected an .npz file (ADM images/statistics or ours) or an image folder")
    keys, stats = _read_npz_stats(path)
    images = NpzImages(path) if "arr_0" in keys else None
    if images is None and stats is None:
        raise ValueError(f"{path} has neither images (arr_0) nor statistics (mu, sigma); keys: {sorted(keys)}")
    if images is not None and images.num_images == 0:
        raise ValueError(f"{path}: arr_0 holds no images")
    return images, stats
