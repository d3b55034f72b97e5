"""The built-in demo: ``lamamba train`` with no arguments, then ``lamamba sample`` with its pixel-space defaults,
must give recognisable, class-correct, diverse digits without isolated saturated pixels.

A logistic-regression classifier fitted on scikit-learn's real 8x8 digits judges 100 class-conditional
samples (10 per class, read back from ``samples.npz``), brought back to 8x8 by 2x2 averaging (the data module
had upsampled the digits 8 -> 16 bilinearly). At least 80% must be classified as the class they were drawn
for; the samples of one class must be as spread as real digits of that class (not one image repeated); and
at most 5 may carry an isolated outlier pixel (what unclamped pixel-space sampling gave: docs/RESULTS.md).
"""
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from lamamba import sample, train
from lamamba.data import build_dataset
from lamamba.pretrained import load_model_info


def _features(images):
    """Images (N, 1, 16, 16) in [-1, 1] -> 8x8 features in [0, 1], the scale of ``load_digits().images / 16``."""
    return ((F.interpolate(images.clamp(-1, 1), size=(8, 8), mode="area") + 1) / 2).reshape(len(images), -1).numpy()


def _outlier_pixels(images):
    """Per image: does a pixel differ from the mean of its 4 neighbours by more than half the range?
    (Real 16x16 digits: at most 0.36.)"""
    p = F.pad(images, (1, 1, 1, 1), mode="replicate")
    mean4 = (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / 4
    return (images - mean4).abs().flatten(1).amax(1) > 1.0


def _spread(images):
    """Mean and smallest L2 distance between the images of one class."""
    d = torch.pdist(images.flatten(1))
    return float(d.mean()), float(d.min())


@pytest.mark.slow
def test_digits_demo_samples_are_recognisable_and_diverse(tmp_path):
    digits = load_digits()
    classifier = LogisticRegression(max_iter=2000).fit(digits.images.reshape(len(digits.images), -1) / 16,
                                                       digits.target)
    held_out = build_dataset("digits", split="test")  # the classifier copes with the 8 -> 16 -> 8 round trip
    assert (classifier.predict(_features(held_out.images)) == held_out.labels.numpy()).mean() > 0.9

    run = tmp_path / "demo"
    tic = time.perf_counter()
    assert train.main(["--run-dir", str(run)]) == 0  # the built-in defaults, nothing else
    print(f"demo training: {time.perf_counter() - tic:.0f} s")
    info = load_model_info(run)
    assert (run / "samples" / f"{info['step']:07d}.png").is_file()

    out = tmp_path / "samples"
    assert sample.main([str(run), "--labels", ",".join(map(str, range(10))), "--num-samples", "100",
                        "--sampler", "dpm++2m", "--steps", "25", "--cfg-scale", "3", "--batch-size", "100",
                        "--npz", "--out", str(out), "--no-progress"]) == 0
    with np.load(out / "samples.npz") as data:
        pixels, labels = data["arr_0"], data["arr_1"]
    assert pixels.shape == (100, 16, 16, 1) and labels.tolist() == [i % 10 for i in range(100)]
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1  # uint8 back to [-1, 1]

    accuracy = (classifier.predict(_features(images)) == labels).mean()
    outliers = int(_outlier_pixels(images).sum())
    print(f"classifier accuracy on demo samples: {accuracy:.2f}; samples with an outlier pixel: {outliers}")
    assert accuracy >= 0.8
    assert outliers <= 5
    real = build_dataset("digits", split="all")
    for c in range(10):
        mean, closest = _spread(images[torch.from_numpy(labels) == c])
        real_mean, real_closest = _spread(real.images[real.labels == c])
        assert mean > 0.5 * real_mean, f"class {c}: samples spread {mean:.2f}, real digits {real_mean:.2f}"
        assert closest > 0.5 * real_closest, f"class {c}: two samples nearly identical ({closest:.2f})"
