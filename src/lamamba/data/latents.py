"""Pre-extracted VAE latents (the fast-DiT recipe), stored as safetensors shards.

The authors encode every batch with the VAE on the fly (SPEC 7.2). Encoding each image once instead saves
most of the VAE's cost per step. What we store, and why:

* the posterior **mean and standard deviation** of the scaled latent (``mean = scale * (mu - shift)``,
  ``std = scale * sigma``), so that training still draws a fresh sample ``mean + std * eps`` at every access,
  exactly the distribution DiT's on-the-fly ``latent_dist.sample() * 0.18215`` draws from;
* the latents of the image **and of its horizontal mirror** (a VAE is not flip-equivariant, so a flipped latent
  is not the latent of the flipped image); an access picks the mirror with probability ``flip_p`` (0.5 as in
  DiT), so one epoch still visits each image once, as the pixel pipeline does.

Layout of ``out_dir``: ``shard-00000.safetensors``, ... each holding ``mean`` and ``std`` of shape
``(n, F, C, h, w)`` (``F`` = 2 with mirrors, else 1; float16 by default) and ``labels`` ``(n,)`` int64; then
``meta.json``. Every shard is written to a temporary file and renamed, and ``meta.json`` is written last, so a
directory without it is an unfinished extraction; rerunning with the same arguments keeps the finished
shards (each carries a fingerprint of the extraction settings) and computes the rest. Several processes
(e.g. ``torchrun``) can share the work: shard ``k`` belongs to rank ``k % world_size``, and whichever rank
finds every shard present writes ``meta.json``.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from lamamba.io import atomic_write

from .transforms import hflip

__all__ = ["LatentDataset", "extract_latents", "is_latent_dir", "META_FILE"]

logger = logging.getLogger(__name__)

FORMAT = "lamamba-latents/1"
META_FILE = "meta.json"
_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def is_latent_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory written by ``extract_latents`` (finished or not)."""
    path = Path(path)
    return path.is_dir() and ((path / META_FILE).exists() or any(path.glob("shard-*.safetensors")))


def _shard_fingerprint(path: Path) -> str | None:
    """The fingerprint stored in a shard's header, or None if the file is missing or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("fingerprint")
    except (OSError, SafetensorError):
        return None


def _settings(dataset: Dataset, vae, *, flips: bool, dtype: str, shard_size: int) -> dict[str, Any]:
    """What defines an extraction (its hash is the fingerprint); checks the images suit the VAE."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if getattr(dataset, "flip_p", 0.0):
        raise ValueError("build the dataset with flip_p=0: extract_latents stores the mirrored latents itself")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    x0, _ = dataset[0]
    in_channels = getattr(getattr(vae.model, "config", None), "in_channels", 3)
    if x0.ndim != 3 or x0.shape[0] != in_channels or x0.shape[1] != x0.shape[2] or x0.shape[1] % vae.downsample:
        raise ValueError(
            f"the VAE needs square images ({in_channels}, S, S) with S divisible by {vae.downsample}; the dataset "
            f"yields {tuple(x0.shape)} (grey datasets: pass channels=3)"
        )
    side = int(x0.shape[-1])
    class_names = list(getattr(dataset, "class_names", []))
    return {
        "format": FORMAT, "vae": vae.name, "scale": vae.scale, "shift": vae.shift, "image_size": side,
        "latent_shape": [vae.latent_channels, side // vae.downsample, side // vae.downsample], "count": len(dataset),
        "num_classes": len(class_names), "class_names": class_names, "flips": flips, "dtype": dtype,
        "shard_size": shard_size,
    }


def _encode_shard(dataset: Dataset, vae, indices: range, *, batch_size: int, num_workers: int, flips: bool,
                  dtype: torch.dtype, bar: tqdm) -> dict[str, torch.Tensor]:
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=vae.device.type == "cuda")
    frames = 2 if flips else 1
    means, stds, labels = [], [], []
    for x, y in loader:
        x = x.to(vae.device, non_blocking=True)
        mean, std = vae.posterior(torch.cat([x, hflip(x)]) if flips else x)  # (F * B, C, h, w)
        means.append(mean.unflatten(0, (frames, -1)).transpose(0, 1).to(dtype).cpu())  # (B, F, C, h, w)
        stds.append(std.unflatten(0, (frames, -1)).transpose(0, 1).to(dtype).cpu())
        labels.append(torch.as_tensor(y, dtype=torch.int64))
        bar.update(len(x))
    return {"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous(), "labels": torch.cat(labels)}


def extract_latents(
    dataset: Dataset,
    vae,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 32,
    shard_size: int = 10_000,
    device: str | torch.device | None = None,
    flips: bool = True,
    dtype: str = "float16",
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Encode every image of ``dataset`` once (and its mirror if ``flips``) into latent shards in ``out_dir``.

    ``dataset`` yields ``(image (3, S, S) in [-1, 1], label)`` with no random flip (build it with
    ``flip_p=0``); ``vae`` is a ``lamamba.autoencoder.VAE``, moved to ``device`` if given. ``dtype`` is the
    storage precision ("float16" or "float32"). Returns ``out_dir``; ``meta.json`` exists there once every
    shard (of every rank) is written. Shards already complete from an interrupted run are kept.
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be positive, got {batch_size} and {shard_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    if overwrite and world_size > 1:
        raise ValueError("overwrite=True with several ranks would race; clear the directory first")
    settings = _settings(dataset, vae, flips=flips, dtype=dtype, shard_size=shard_size)
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    if device is not None:
        vae.model.to(device)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / META_FILE
    if overwrite:
        for stale in [meta_path, *out.glob("shard-*.safetensors")]:
            stale.unlink()
    if meta_path.exists():
        try:
            existing = json.loads(meta_path.read_text()).get("fingerprint")
        except (json.JSONDecodeError, AttributeError):
            existing = None
        if existing == fingerprint:
            logger.info("%s already holds these latents; nothing to do", out)
            return out
        raise ValueError(f"{out} already holds a different latent set; choose another directory or overwrite")

    count = len(dataset)
    ranges = [range(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]
    pending = []
    for k in range(rank, len(ranges), world_size):
        found = _shard_fingerprint(out / _shard_name(k))
        if found is not None and found != fingerprint:
            raise ValueError(f"{out / _shard_name(k)} comes from another extraction (different settings); "
                             "choose another directory or overwrite")
        if found is None:
            pending.append(k)
    if len(pending) < len(range(rank, len(ranges), world_size)):
        logger.info("resuming %s: %d shard(s) of this rank left to encode", out, len(pending))

    with tqdm(total=sum(len(ranges[k]) for k in pending), unit="img", desc="extracting latents",
              disable=not progress) as bar:
        for k in pending:
            tensors = _encode_shard(dataset, vae, ranges[k], batch_size=batch_size, num_workers=num_workers,
                                    flips=flips, dtype=_DTYPES[dtype], bar=bar)
            header = {"fingerprint": fingerprint, "start": str(ranges[k].start), "count": str(len(ranges[k]))}
            atomic_write(out / _shard_name(k), lambda p: save_file(tensors, str(p), metadata=header))

    # Whichever rank sees every shard finished writes the index; until then the directory is "unfinished".
    if all(_shard_fingerprint(out / _shard_name(k)) == fingerprint for k in range(len(ranges))):
        shards = [{"file": _shard_name(k), "start": r.start, "count": len(r)} for k, r in enumerate(ranges)]
        meta = {**settings, "fingerprint": fingerprint, "shards": shards, "dataset": repr(dataset),
                "stored": "posterior mean and std of the scaled latent; a latent is mean + std * N(0, 1)"}
        atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
        logger.info("wrote %d latents in %d shards to %s", count, len(ranges), out)
    return out


class LatentDataset(Dataset):
    """Latents written by ``extract_latents`` -> ``(latent (C, h, w) float32, label int64)``.

    Each access draws ``mean + std * eps`` (``sample=False``: the mean) of the original or, with probability
    ``flip_p``, the mirrored image (never, for latents extracted without mirrors). Shards are memory-mapped lazily, per process, so DataLoader workers share
    the page cache instead of copies. ``image_size`` is the latent side; ``source_image_size`` the pixel side.
    """

    def __init__(self, root: str | os.PathLike, *, sample: bool = True, flip_p: float = 0.5) -> None:
        self.root = Path(root)
        meta_path = self.root / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} is missing: {str(self.root)!r} is not a latent directory, or its extraction did not "
                "finish (rerun extract-latents with the same arguments to resume it)"
            )
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p is a probability in [0, 1], got {flip_p}")
        self.sample, self.flip_p = sample, flip_p
        try:
            self.meta = meta = json.loads(meta_path.read_text())
            self._check_meta(meta)
            self.channels, self.image_size, _ = meta["latent_shape"]  # latents are square: (C, h, h)
            self.source_image_size: int = meta["image_size"]
            self.class_names: list[str] = list(meta["class_names"])
            self.vae_name, self.scale, self.flips = meta["vae"], meta["scale"], bool(meta["flips"])
            self._files = [self.root / s["file"] for s in meta["shards"]]
            self._starts = [s["start"] for s in meta["shards"]]
            self.labels = self._read_labels()
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{meta_path} is corrupt or not a lamamba latent index ({error!r}); "
                             "re-extract into a clean directory") from error
        self._handles: dict[int, Any] = {}

    def _check_meta(self, meta: dict) -> None:
        if meta.get("format") != FORMAT:
            raise ValueError(f"{self.root}: unknown latent format {meta.get('format')!r}, expected {FORMAT!r}")
        position = 0
        for shard in meta["shards"]:
            if shard["start"] != position:
                raise ValueError(f"{self.root}/meta.json: shard {shard['file']} starts at {shard['start']}, "
                                 f"expected {position}")
            position += shard["count"]
        if position != meta["count"] or len(meta["class_names"]) != meta["num_classes"]:
            raise ValueError(f"{self.root}/meta.json is inconsistent: shards hold {position} items for a count of "
                             f"{meta['count']}, {len(meta['class_names'])} class names for {meta['num_classes']}")

    def _read_labels(self) -> np.ndarray:
        """Check every shard's header against meta.json and gather the labels (small: 8 bytes per item)."""
        frames = 2 if self.flips else 1
        labels = []
        for path, shard in zip(self._files, self.meta["shards"]):
            expected = [shard["count"], frames, *self.meta["latent_shape"]]
            try:
                with safe_open(str(path), framework="pt") as f:
                    shapes = [f.get_slice(key).get_shape() for key in ("mean", "std", "labels")]
                    fingerprint = (f.metadata() or {}).get("fingerprint")
                    shard_labels = f.get_tensor("labels").numpy()
            except (OSError, SafetensorError) as error:
                raise ValueError(f"latent shard {path} is missing or unreadable ({error}); re-extract") from error
            if shapes != [expected, expected, [shard["count"]]] or fingerprint != self.meta["fingerprint"]:
                raise ValueError(f"latent shard {path} does not match meta.json (shapes {shapes}, expected "
                                 f"{expected}; fingerprint {fingerprint}); re-extract into a clean directory")
            labels.append(shard_labels)
        labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
        high = max(self.num_classes, 1)
        if labels.size and (labels.min() < 0 or labels.max() >= high):
            raise ValueError(f"{self.root}: labels outside [0, {high}) although meta.json lists "
                             f"{self.num_classes} classes")
        return labels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict:  # open file handles stay in the process that opened them
        return {**self.__dict__, "_handles": {}}

    def _shard(self, k: int):
        if k not in self._handles:
            self._handles[k] = safe_open(str(self._files[k]), framework="pt")
        return self._handles[k]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} latents")
        index %= len(self)
        k = bisect.bisect_right(self._starts, index) - 1
        j, shard = index - self._starts[k], self._shard(k)
        frame = int(self.flips and self.flip_p > 0 and torch.rand(()).item() < self.flip_p)
        z = shard.get_slice("mean")[j, frame].float()  # (C, h, w)
        if self.sample:
            z += shard.get_slice("std")[j, frame].float() * torch.randn_like(z)
        return z, torch.tensor(self.labels[index], dtype=torch.int64)

    def __repr__(self) -> str:
        shape = f"{self.channels}x{self.image_size}x{self.image_size}"
        return (f"LatentDataset({str(self.root)!r}, {len(self)} latents {shape} from {self.source_image_size}px, "
                f"{self.num_classes} classes, vae={self.vae_name!r})")
