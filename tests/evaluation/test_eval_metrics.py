"""Metric math against closed forms and naive re-implementations written here."""
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from lamamba.evaluation.metrics import (
    FewSamplesWarning, GaussianStats, RunningMoments, frechet_distance, inception_score, manifold_radii,
    precision_recall,
)


def _random_cov(rng, d):
    a = rng.standard_normal((d, 2 * d))
    return a @ a.T / (2 * d)


# ----------------------------------------------------------------------------- Frechet distance

def test_frechet_diagonal_closed_form():
    # Diagonal covariances commute: d^2 = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2, elementwise.
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    s1, s2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_scipy_sqrtm_form():
    rng = np.random.default_rng(1)
    d = 20
    mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), _random_cov(rng, d), _random_cov(rng, d)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real  # the ADM / TTUR formula
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_of_a_set_with_itself_is_zero_and_fid_is_symmetric():
    rng = np.random.default_rng(2)
    a = GaussianStats.from_features(rng.standard_normal((300, 16)))
    b = GaussianStats.from_features(rng.standard_normal((300, 16)) * 1.3 + 0.5)
    assert abs(frechet_distance(a.mu, a.sigma, a.mu, a.sigma)) < 1e-9
    assert frechet_distance(a.mu, a.sigma, b.mu, b.sigma) == pytest.approx(
        frechet_distance(b.mu, b.sigma, a.mu, a.sigma), rel=1e-9)


def test_frechet_singular_covariances_stay_finite():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 12))  # rank-4 covariance in 12 dimensions
    with pytest.warns(FewSamplesWarning, match="singular"):
        s = GaussianStats.from_features(x)
    # sqrt of round-off-sized eigenvalues (~1e-16) leaves ~1e-7 of noise, in the sqrtm form as well
    assert abs(frechet_distance(s.mu, s.sigma, s.mu, s.sigma)) < 1e-6 * np.trace(s.sigma)


def test_frechet_rejects_different_feature_spaces():
    with pytest.raises(ValueError, match="different feature spaces"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_stats_need_two_images():
    with pytest.raises(ValueError, match="at least 2 images"):
        GaussianStats.from_features(np.zeros((1, 3)))


def test_running_moments_equal_np_cov():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((103, 7)) * 5 + 100  # large offset: checks the shifted accumulation
    acc = RunningMoments()
    for chunk in np.array_split(x, 6):
        acc.update(torch.from_numpy(chunk))
    s = acc.stats()
    assert s.num == 103
    np.testing.assert_allclose(s.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)


def test_running_moments_warn_when_too_few_images():
    acc = RunningMoments()
    acc.update(torch.randn(10, 2048))
    with pytest.warns(FewSamplesWarning, match="10 images for 2048-dimensional"):
        acc.stats()


# ----------------------------------------------------------------------------- Inception Score

def _naive_is(logits, splits):
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0)
        kl = [sum(q[j] * np.log(q[j] / py[j]) for j in range(len(py))) for q in part]
        scores.append(np.exp(np.mean(kl)))
    return np.mean(scores)


def test_inception_score_of_uniform_logits_is_one():
    mean, std = inception_score(np.zeros((50, 1008)), num_splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_balanced_predictions_is_num_classes():
    logits = np.full((40, 4), -200.0)  # probabilities underflow to exactly 0: must not give NaN
    logits[np.arange(40), np.arange(40) % 4] = 0.0
    mean, _ = inception_score(logits, num_splits=2)
    assert mean == pytest.approx(4.0, rel=1e-9)


def test_inception_score_matches_naive_definition():
    logits = np.random.default_rng(5).standard_normal((30, 6)) * 2
    assert inception_score(logits, num_splits=3)[0] == pytest.approx(_naive_is(logits, 3), rel=1e-10)


def test_inception_score_needs_enough_images():
    with pytest.raises(ValueError, match="at least 10 images"):
        inception_score(np.zeros((5, 10)), num_splits=10)


# ----------------------------------------------------------------------------- precision / recall

def _naive_pr(ref, smp, k):
    def d2(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    def radii(x):
        return np.array([np.sort(d2(x[i:i + 1], x)[0])[k] for i in range(len(x))])  # includes self at 0

    r_ref, r_smp = radii(ref), radii(smp)
    precision = np.mean([any(d2(s[None], ref)[0] <= r_ref) for s in smp])
    recall = np.mean([any(d2(r[None], smp)[0] <= r_smp) for r in ref])
    return precision, recall


def test_precision_recall_known_answer_on_a_line():
    # Reference: the points 0..9 on a line; k=3 radius is 2 inside, 3 at the ends (squared 4 / 9).
    ref = np.arange(10.0)[:, None]
    smp = np.array([[0.5], [5.2], [11.9], [50.0], [-100.0], [60.0], [70.0], [80.0]])
    precision, recall = precision_recall(ref, smp, k=3)
    assert precision == pytest.approx(3 / 8)  # 0.5, 5.2 and 11.9 (within 3 of the end point 9)
    # Sample radii: 0.5 -> 11.9 (distance 11.4) covers the whole reference; so recall is 1.
    assert recall == pytest.approx(1.0)


def test_precision_recall_match_naive_on_random_sets():
    rng = np.random.default_rng(6)
    ref = rng.standard_normal((60, 5)).astype(np.float32)
    smp = (rng.standard_normal((45, 5)) * 1.5 + 0.7).astype(np.float32)
    got = precision_recall(ref, smp, k=3, block=16)  # small blocks exercise the tiling
    np.testing.assert_allclose(got, _naive_pr(ref.astype(np.float64), smp.astype(np.float64), 3))


def test_precision_recall_of_identical_sets_is_one():
    x = np.random.default_rng(7).standard_normal((30, 4))
    assert precision_recall(x, x) == (1.0, 1.0)


def test_manifold_radii_need_more_than_k_points():
    with pytest.raises(ValueError, match="more than 3 feature vectors"):
        manifold_radii(torch.zeros(3, 2), k=3)


def test_precision_recall_reject_mismatched_dims():
    with pytest.raises(ValueError, match="same D"):
        precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))


def test_no_warning_with_enough_images():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GaussianStats.from_features(np.random.default_rng(8).standard_normal((20, 3)))
