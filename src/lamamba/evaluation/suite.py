"""The evaluation suite: features -> statistics -> FID, sFID, Inception Score, precision, recall.

``compute_stats`` streams images through a feature network; ``evaluate`` compares two
``FeatureStats``; ``stats_for_input`` and ``make_reference`` serve the ``lamamba evaluate`` command;
``evaluate_samples`` is the cheap hook for the training loop.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .features import FeatureExtractor
from .inputs import ArrayImages, FeatureStats, ImageSource, open_input, save_stats
from .metrics import GaussianStats, RunningMoments, frechet_distance, inception_score, precision_recall

__all__ = ["METRICS", "compute_stats", "evaluate", "stats_for_input", "make_reference", "evaluate_samples"]

METRICS = ("fid", "sfid", "is", "pr")  # pr = precision and recall


def compute_stats(
    images: ImageSource | np.ndarray | torch.Tensor | str | Path,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 64,
    num_images: int | None = None,
    keep_features: int | None = None,
    keep_logits: bool = False,
    spatial: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> FeatureStats:
    """Run ``images`` through ``extractor`` and accumulate what the metrics need.

    ``images``: an ``ImageSource``, a path (``.npz`` with ``arr_0`` or a folder), a uint8 (N, H, W[, C])
    array/tensor, or a float tensor (N, C, H, W) in [-1, 1]. ``num_images``: use the first N only.
    ``keep_features``: how many pool-feature rows to keep for precision/recall (None: all; fewer than
    N: a random subset drawn with ``seed``; 0: none). ``keep_logits``: keep logits (Inception Score).
    ``spatial``: accumulate the spatial statistics (sFID), if the network has spatial features.
    """
    if isinstance(images, (str, Path)):
        images, _ = open_input(images)
        if images is None:
            raise ValueError("this input holds statistics, not images; nothing to compute")
    elif not isinstance(images, ImageSource):
        images = ArrayImages(images)
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    n = images.num_images if num_images is None else min(num_images, images.num_images)
    if n < 1:
        raise ValueError(f"{images.description}: no images to evaluate")
    if keep_features is None or keep_features >= n:
        keep = np.arange(n)
    else:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=keep_features, replace=False))
    pool_m, spatial_m = RunningMoments(), RunningMoments()
    kept, logits = [], []
    start = 0
    bar = tqdm(total=n, disable=not progress, desc=f"features of {images.description}", unit="img")
    for batch in images.batches(batch_size, n):
        out = extractor(torch.from_numpy(batch if batch.flags.writeable else batch.copy()))
        pool_m.update(out["pool"])
        if spatial and out.get("spatial") is not None:
            spatial_m.update(out["spatial"])
        rows = keep[(keep >= start) & (keep < start + len(batch))] - start
        if len(rows):
            kept.append(out["pool"][torch.from_numpy(rows).to(out["pool"].device)].cpu().numpy())
        if keep_logits and "logits" in out:
            logits.append(out["logits"].double().cpu().numpy())
        start += len(batch)
        bar.update(len(batch))
    bar.close()
    what = f"{images.description} ({extractor.name}"
    stats = FeatureStats(
        network=extractor.name, num_images=n, origin=images.description,
        pool=pool_m.stats(what + " pool features)"),
        spatial=spatial_m.stats(what + " spatial features)") if spatial_m.n else None,
        pool_features=np.concatenate(kept) if kept else None,
        logits=np.concatenate(logits) if logits else None,
        image_shape=tuple(images.image_shape), network_info=extractor.info(),
    )
    if stats.logits is None:
        stats.logits_note = extractor.logits_unavailable if keep_logits else "not requested"
    return stats


def _frechet_entry(ref: GaussianStats, samples: GaussianStats, network: str, kind: str) -> dict:
    return {"value": frechet_distance(ref.mu, ref.sigma, samples.mu, samples.sigma),
            "features": f"{network} {kind} ({ref.mu.shape[0]}-d)",
            "num_ref": ref.num, "num_samples": samples.num}


def _unavailable(reason: str) -> dict:
    return {"value": None, "unavailable": reason}


def evaluate(
    ref: FeatureStats,
    samples: FeatureStats,
    metrics: tuple[str, ...] = METRICS,
    *,
    k: int = 3,
    num_splits: int = 10,
    device: str | torch.device = "cpu",
) -> dict[str, dict]:
    """Compare ``samples`` with ``ref``: {metric: {"value", "features", "num_ref", "num_samples"}}.

    Metrics: ``fid`` (pool Gaussians), ``sfid`` (spatial Gaussians), ``is`` (Inception Score of the
    samples' logits, ``num_splits`` splits), ``pr`` (``precision`` and ``recall``, k-NN manifolds). A
    metric whose inputs are missing gets ``"value": None`` and ``"unavailable"``: the reason.
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(METRICS)}")
    if ref.network != samples.network:
        raise ValueError(
            f"reference features come from {ref.network!r} but the samples' from {samples.network!r}; "
            "compute both with the same feature network (see --features / --make-ref)"
        )
    net = ref.network
    out: dict[str, dict] = {}
    if "fid" in metrics:
        out["fid"] = _frechet_entry(ref.pool, samples.pool, net, "pool")
    if "sfid" in metrics:
        if samples.spatial is None:
            out["sfid"] = _unavailable(f"{net} gives no spatial features for {samples.origin}")
        elif ref.spatial is None:
            out["sfid"] = _unavailable(f"{ref.origin} has no spatial statistics")
        else:
            out["sfid"] = _frechet_entry(ref.spatial, samples.spatial, net, "spatial")
    if "is" in metrics:
        if samples.logits is None:
            out["inception_score"] = _unavailable(samples.logits_note or "no logits")
        else:
            mean, std = inception_score(samples.logits, num_splits)
            out["inception_score"] = {"value": mean, "std": std, "splits": num_splits,
                                      "features": f"{net} logits ({samples.logits.shape[1]} classes)",
                                      "num_samples": len(samples.logits)}
    if "pr" in metrics:
        missing = next((s for s in (ref, samples) if s.pool_features is None), None)
        if missing is not None:
            reason = f"{missing.origin} keeps no per-image features (k-NN manifolds need them)"
            out["precision"], out["recall"] = _unavailable(reason), _unavailable(reason)
        else:
            p, r = precision_recall(ref.pool_features, samples.pool_features, k=k, device=device)
            common = {"features": f"{net} pool ({ref.pool_features.shape[1]}-d), k={k}",
                      "num_ref": len(ref.pool_features), "num_samples": len(samples.pool_features)}
            out["precision"], out["recall"] = {"value": p, **common}, {"value": r, **common}
    return out


def stats_for_input(
    path: str | Path,
    extractor: FeatureExtractor,
    *,
    need_features: bool,
    keep_logits: bool = False,
    spatial: bool = True,
    batch_size: int = 64,
    num_images: int | None = None,
    progress: bool = False,
) -> FeatureStats:
    """Statistics for one command-line input (see ``inputs.open_input`` for what a path may be).

    As ADM's evaluator: precomputed ``mu``/``sigma`` in an ``.npz`` are used for FID/sFID, while its
    images (``arr_0``), if any, still provide per-image features (precision/recall) and logits.
    Precomputed statistics of another feature network are an error, or ignored if images are present.
    """
    images, stats = open_input(path)
    if stats is not None and stats.network != extractor.name:
        if images is None:
            raise ValueError(
                f"{path}: statistics computed with {stats.network!r}, but this run uses {extractor.name!r}; "
                "choose the matching --features or recompute them with `lamamba evaluate --make-ref`"
            )
        ignored, stats = stats.network, None
    else:
        ignored = None
    if images is None or (stats is not None and not need_features and not keep_logits):
        return stats
    computed = compute_stats(images, extractor, batch_size=batch_size, num_images=num_images,
                             keep_features=None if need_features else 0, keep_logits=keep_logits,
                             spatial=spatial and (stats is None or stats.spatial is None), progress=progress)
    if stats is None:
        if ignored is not None:
            computed.origin += f" (its {ignored} statistics ignored: another feature network)"
        return computed
    computed.pool, computed.spatial = stats.pool, stats.spatial or computed.spatial
    computed.origin = f"{stats.origin} (mu/sigma) with images arr_0"
    return computed


def make_reference(
    data: str | Path,
    out: str | Path,
    extractor: FeatureExtractor,
    *,
    keep_features: int = 10_000,
    batch_size: int = 64,
    num_images: int | None = None,
    progress: bool = False,
) -> FeatureStats:
    """Compute reference statistics of ``data`` (image folder or ``.npz``) and save them to ``out``.

    ``keep_features`` random pool-feature rows are stored for precision/recall (ADM's reference batches
    hold 10,000 images for the same purpose).
    """
    images, _ = open_input(data)
    if images is None:
        raise ValueError(f"{data} holds statistics, not images; --make-ref needs images")
    stats = compute_stats(images, extractor, batch_size=batch_size, num_images=num_images,
                          keep_features=keep_features, progress=progress)
    save_stats(out, stats)
    return stats


def evaluate_samples(
    samples: np.ndarray | torch.Tensor,
    ref: FeatureStats,
    extractor: FeatureExtractor,
    *,
    metrics: tuple[str, ...] = ("fid",),
    batch_size: int = 64,
) -> dict[str, float | int | str]:
    """Training-loop hook: metrics of in-memory ``samples`` against ``ref``, as a flat loggable dict.

    ``samples``: uint8 (N, H, W[, C]) or a float tensor (N, C, H, W) in [-1, 1] (quantised to uint8
    first, like saved samples). Returns e.g. ``{"fid": 23.1, "num_samples": 1000, "feature_network":
    "inception-v3-tf-2015-12-05"}``; ``metrics`` may add ``sfid``, ``is`` (``inception_score``) and
    ``pr`` (``precision``, ``recall``). A requested metric that cannot be computed raises ValueError.
    FID from N samples is biased upwards as N shrinks: compare values only at the same N.
    """
    stats = compute_stats(ArrayImages(samples), extractor, batch_size=batch_size,
                          keep_features=None if "pr" in metrics else 0, keep_logits="is" in metrics,
                          spatial="sfid" in metrics)
    result: dict[str, float | int | str] = {}
    for name, entry in evaluate(ref, stats, metrics, device=extractor.device).items():
        if entry["value"] is None:
            raise ValueError(f"{name} cannot be computed: {entry['unavailable']}")
        result[name] = entry["value"]
    result["num_samples"] = stats.num_images
    result["feature_network"] = extractor.name
    return result
