"""In-training evaluation: FID of EMA samples against reference statistics lands in metrics.jsonl."""
import json

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::lamamba.evaluation.FewSamplesWarning")

from lamamba import train
from lamamba.data import build_dataset
from lamamba.evaluation import compute_stats, load_feature_extractor, save_stats
from lamamba.evaluation.inputs import ArrayImages

TINY = ["--model-arg", "embed_dim=8", "--model-arg", "cond_dim=16", "--global-batch-size", "8", "--sample-num", "0",
        "--no-tensorboard", "--log-every", "1", "--max-steps", "2", "--ckpt-every", "2", "--device", "cpu"]


@pytest.fixture
def digits_ref(tmp_path):
    images = build_dataset("digits", split="test").images                       # (N, 1, 16, 16) in [-1, 1]
    uint8 = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    path = tmp_path / "digits_pixels.npz"
    save_stats(path, compute_stats(ArrayImages(uint8), load_feature_extractor("pixels")))
    return path


def test_fid_is_logged_during_training(tmp_path, digits_ref):
    run = tmp_path / "run"
    assert train.main(["--run-dir", str(run), *TINY, "--eval-every", "2", "--eval-samples", "6",
                       "--eval-ref", str(digits_ref), "--eval-features", "pixels", "--eval-steps", "2"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_fid" in r]
    assert len(evals) == 1 and evals[0]["step"] == 2
    assert evals[0]["eval_num_samples"] == 6 and evals[0]["eval_feature_network"] == "pixels"
    assert np.isfinite(evals[0]["eval_fid"]) and evals[0]["eval_fid"] > 0


def test_eval_needs_matching_reference(tmp_path, digits_ref):
    with pytest.raises(ValueError, match="needs --eval-ref"):
        train.run(train_args(tmp_path, "--eval-every", "2"))
    assert train.main(["--run-dir", str(tmp_path / "x"), *TINY, "--eval-every", "2",
                       "--eval-ref", str(tmp_path / "missing.npz")]) == 2


def train_args(tmp_path, *extra):
    import argparse
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return parser.parse_args(["--run-dir", str(tmp_path / "run"), *TINY, *extra])
