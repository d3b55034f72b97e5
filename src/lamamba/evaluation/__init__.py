"""Sample-quality evaluation: the ADM suite (FID, sFID, Inception Score, precision, recall) in PyTorch.

Quick use in a training loop::

    from lamamba.evaluation import load_feature_extractor, load_stats, evaluate_samples
    extractor = load_feature_extractor("inception", device="cuda")
    ref = load_stats("ref_stats.npz")          # from `lamamba evaluate --make-ref DATA ref_stats.npz`
    metrics = evaluate_samples(samples, ref, extractor)   # {"fid": ..., "num_samples": ..., ...}

See docs/EVALUATION.md for which numbers are comparable with published ADM-suite numbers.
"""
from .features import FeatureExtractor, PixelFeatures, TorchScriptFeatures, load_feature_extractor
from .inception import INCEPTION_NAME, InceptionFeatures, tf1_resize_bilinear
from .inputs import ArrayImages, FeatureStats, FolderImages, NpzImages, load_stats, open_input, save_stats
from .metrics import FewSamplesWarning, GaussianStats, frechet_distance, inception_score, precision_recall
from .suite import METRICS, compute_stats, evaluate, evaluate_samples, make_reference, stats_for_input

__all__ = [
    "FeatureExtractor", "PixelFeatures", "TorchScriptFeatures", "InceptionFeatures", "load_feature_extractor",
    "INCEPTION_NAME", "tf1_resize_bilinear", "ArrayImages", "FolderImages", "NpzImages", "FeatureStats",
    "load_stats", "save_stats", "open_input", "GaussianStats", "FewSamplesWarning", "frechet_distance",
    "inception_score", "precision_recall", "METRICS", "compute_stats", "evaluate", "evaluate_samples",
    "make_reference", "stats_for_input",
]
