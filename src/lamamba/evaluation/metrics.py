"""Sample-quality metrics on feature vectors: Frechet distance, Inception Score, precision and recall.

Every function here works on features that some network already produced (see ``features.py``); none
of them knows which network that was. The definitions follow the references named in each docstring
and, where those leave a choice open, the ADM evaluation suite (Dhariwal & Nichol 2021,
``guided-diffusion/evaluations/evaluator.py``), which is what the LaMamba-Diff paper reports.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "GaussianStats", "RunningMoments", "FewSamplesWarning", "frechet_distance", "inception_score",
    "manifold_radii", "precision_recall",
]


class FewSamplesWarning(UserWarning):
    """Fewer feature vectors than dimensions: the covariance is singular and the FID strongly biased."""


@dataclass(frozen=True)
class GaussianStats:
    """Mean ``mu`` (D,) and covariance ``sigma`` (D, D) of ``num`` feature vectors (float64).

    ``num`` is None for precomputed statistics that do not record their image count (ADM's files).
    """

    mu: np.ndarray
    sigma: np.ndarray
    num: int | None

    @classmethod
    def from_features(cls, features: np.ndarray, what: str = "features") -> "GaussianStats":
        """Sample mean and unbiased covariance (``np.cov``, divisor N - 1), as ADM and TTUR compute them.

        Raises ValueError for fewer than 2 vectors; warns (``FewSamplesWarning``) when N <= D, where the
        covariance has rank < D and the Frechet distance is biased upwards (not comparable to papers).
        """
        features = np.asarray(features)
        if features.ndim != 2:
            raise ValueError(f"{what}: expected a (N, D) array of feature vectors, got shape {features.shape}")
        n, d = features.shape
        _check_count(n, d, what)
        x = features.astype(np.float64)
        return cls(mu=x.mean(axis=0), sigma=np.cov(x, rowvar=False).reshape(d, d), num=n)


def _check_count(n: int, d: int, what: str) -> None:
    if n < 2:
        raise ValueError(f"{what}: a covariance needs at least 2 images, got {n}; pass more images")
    if n <= d:
        warnings.warn(
            f"{what}: {n} images for {d}-dimensional features; the covariance is singular and the "
            f"Frechet distance is biased upwards. Use more than {d} images (papers use 50,000).",
            FewSamplesWarning, stacklevel=3,
        )


class RunningMoments:
    """Mean and covariance accumulated batch by batch (float64), equal to ``np.cov`` of all rows.

    Sums are taken about a shift (the first batch's mean) so that the final
    cov = (sum dx dx^T - n m m^T) / (n - 1), m = mean(dx), does not cancel catastrophically.
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.s1: torch.Tensor | None = None  # sum of (x - shift)
        self.s2: torch.Tensor | None = None  # sum of (x - shift)(x - shift)^T

    def update(self, x: torch.Tensor) -> None:
        """Add a (B, D) batch of feature vectors."""
        x = x.detach().double()
        if self.shift is None:
            self.shift = x.mean(0)
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype, device=x.device)
        dx = x - self.shift
        self.s1 += dx.sum(0)
        self.s2 += dx.T @ dx
        self.n += x.shape[0]

    def stats(self, what: str = "features") -> GaussianStats:
        """The accumulated ``GaussianStats`` (same checks as ``GaussianStats.from_features``)."""
        if self.s1 is None:
            raise ValueError(f"{what}: no images")
        _check_count(self.n, self.s1.shape[0], what)
        m = self.s1 / self.n
        cov = (self.s2 - self.n * torch.outer(m, m)) / (self.n - 1)
        return GaussianStats(mu=(self.shift + m).cpu().numpy(), sigma=cov.cpu().numpy(), num=self.n)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982; FID, Heusel 2017).

        d^2 = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))

    ADM and TTUR evaluate the last trace with ``scipy.linalg.sqrtm(S1 @ S2)``. We use the equivalent
    symmetric form Tr((S1 S2)^(1/2)) = Tr((A S2 A)^(1/2)) with A = S1^(1/2): both matrices are similar,
    and A S2 A is symmetric positive semi-definite, so its square-root eigenvalues come from ``eigh``
    without complex round-off and about twice as fast. Tiny negative eigenvalues (round-off on
    singular covariances) are clipped to zero. Results agree with the sqrtm form to ~1e-10 relative.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"statistics of different feature spaces: mean {mu1.shape} / {mu2.shape}, covariance "
            f"{s1.shape} / {s2.shape}; both sides must come from the same feature network"
        )
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    w1, v1 = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T  # S1^(1/2)
    inner = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def inception_score(logits: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), mean and std over splits.

    p(y|x) = softmax(logits); the N rows are cut into ``num_splits`` contiguous parts, p(y) is the mean
    over each part, and the score is averaged over parts, as in the improved-GAN code that ADM calls
    (ADM cuts parts of 5,000 rows, i.e. 10 parts for the usual 50,000 samples). Computed in float64
    from log-softmax, so probabilities that underflow to 0 do not produce NaN.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be a (N, num_classes) array, got shape {logits.shape}")
    if num_splits < 1 or logits.shape[0] < num_splits:
        raise ValueError(
            f"the Inception Score with {num_splits} splits needs at least {num_splits} images, "
            f"got {logits.shape[0]}"
        )
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))  # log p(y|x)
    scores = []
    for part in np.array_split(log_p, num_splits):
        p = np.exp(part)
        log_marginal = np.log(p.mean(axis=0, keepdims=True))  # log p(y)
        kl = (p * (part - log_marginal)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) squared Euclidean distances via |a|^2 - 2ab + |b|^2, clamped at 0 (as ADM)."""
    d = (a * a).sum(1, keepdim=True) - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
    return d.clamp_min_(0.0)


def manifold_radii(features: torch.Tensor, k: int = 3, block: int = 2048) -> torch.Tensor:
    """Squared distance from each vector to its k-th nearest neighbour in the same set (Kynkaanniemi 2019).

    As ADM and the authors' code, the sorted distances include the vector itself (distance 0) at
    position 0, so position k is the k-th nearest *other* vector.
    """
    n = features.shape[0]
    if n <= k:
        raise ValueError(f"k-NN manifolds with k={k} need more than {k} feature vectors, got {n}")
    radii = torch.empty(n, dtype=features.dtype, device=features.device)
    for start in range(0, n, block):
        d = _squared_distances(features[start:start + block], features)
        radii[start:start + block] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def _fraction_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> float:
    """Fraction of ``points`` within (squared distance <=) the radius of at least one centre."""
    inside = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    for i in range(0, points.shape[0], block):
        p = points[i:i + block]
        for j in range(0, centres.shape[0], block):
            d = _squared_distances(p, centres[j:j + block])
            inside[i:i + block] |= (d <= radii[None, j:j + block]).any(dim=1)
    return inside.double().mean().item()


def precision_recall(
    ref: np.ndarray | torch.Tensor,
    samples: np.ndarray | torch.Tensor,
    k: int = 3,
    device: str | torch.device = "cpu",
    block: int = 2048,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, k-NN manifolds), as ADM computes them.

    Each set's manifold is the union of balls around its vectors with radius the distance to the k-th
    nearest neighbour. Precision = fraction of samples inside the reference manifold; recall = fraction
    of reference vectors inside the sample manifold. Distances are float32 on ``device`` (ADM uses
    float16 where finite); ties are counted as inside (``<=``), as ADM does.
    """
    ref_t, smp_t = (torch.as_tensor(x).to(device=device, dtype=torch.float32) for x in (ref, samples))
    if ref_t.ndim != 2 or smp_t.ndim != 2 or ref_t.shape[1] != smp_t.shape[1]:
        raise ValueError(
            f"precision/recall need two (N, D) feature arrays of the same D, got {tuple(ref_t.shape)} "
            f"and {tuple(smp_t.shape)}"
        )
    radii_ref = manifold_radii(ref_t, k, block)
    radii_smp = manifold_radii(smp_t, k, block)
    precision = _fraction_inside(smp_t, ref_t, radii_ref, block)
    recall = _fraction_inside(ref_t, smp_t, radii_smp, block)
    return precision, recall
