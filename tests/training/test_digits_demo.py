"""The built-in demo: ``lamamba train`` with no arguments must produce recognisable, class-correct digits.

A logistic-regression classifier fitted on scikit-learn's real 8x8 digits judges 100 class-conditional
samples (10 per class) of the demo's EMA model, brought back to 8x8 by 2x2 averaging (the data module had
upsampled the digits 8 -> 16 bilinearly). At least 80% must be classified as the class they were drawn for.
"""
import time

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from lamamba import train
from lamamba.checkpoint import load_checkpoint_info, load_pretrained
from lamamba.data import build_dataset
from lamamba.diffusion import create_diffusion
from lamamba.sample import generate


def _features(images):
    """Images (N, 1, 16, 16) in [-1, 1] -> 8x8 features in [0, 1], the scale of ``load_digits().images / 16``."""
    return ((F.interpolate(images.clamp(-1, 1), size=(8, 8), mode="area") + 1) / 2).reshape(len(images), -1).numpy()


@pytest.mark.slow
def test_digits_demo_samples_are_recognisable(tmp_path):
    digits = load_digits()
    classifier = LogisticRegression(max_iter=2000).fit(digits.images.reshape(len(digits.images), -1) / 16,
                                                       digits.target)
    held_out = build_dataset("digits", split="test")  # the classifier copes with the 8 -> 16 -> 8 round trip
    assert (classifier.predict(_features(held_out.images)) == held_out.labels.numpy()).mean() > 0.9

    run = tmp_path / "demo"
    tic = time.perf_counter()
    assert train.main(["--run-dir", str(run)]) == 0  # the built-in defaults, nothing else
    print(f"demo training: {time.perf_counter() - tic:.0f} s")
    info = load_checkpoint_info(run)
    assert (run / "samples" / f"{info['step']:07d}.png").is_file()

    model = load_pretrained(run)
    labels = torch.arange(10).repeat_interleave(10)
    samples = generate(model, create_diffusion(**info["diffusion"]), indices=range(100), labels=labels, seed=0,
                       sampler="dpm++2m", steps=25, cfg_scale=3.0)
    accuracy = (classifier.predict(_features(samples)) == labels.numpy()).mean()
    print(f"classifier accuracy on demo samples: {accuracy:.2f}")
    assert accuracy >= 0.8
