"""User errors of ``lamamba train`` are one clear message, and a tiny run learns."""
import pytest

from lamamba import train

TINY = ["--model-arg", "embed_dim=8", "--model-arg", "cond_dim=16", "--global-batch-size", "8", "--sample-num", "0",
        "--no-tensorboard", "--device", "cpu"]


def parse(argv):
    import argparse
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return parser.parse_args(argv)


def test_missing_and_empty_data_directories(tmp_path, capsys):
    with pytest.raises((FileNotFoundError, ValueError), match="missing|no such|not found|does not exist"):
        train.run(parse(["--run-dir", str(tmp_path / "a"), "--data", str(tmp_path / "missing"), "--image-size", "16",
                         *TINY]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="image"):
        train.run(parse(["--run-dir", str(tmp_path / "b"), "--data", str(tmp_path / "empty"), "--image-size", "16",
                         *TINY]))
    assert train.main(["--run-dir", str(tmp_path / "c"), "--data", str(tmp_path / "empty"), "--image-size", "16",
                       *TINY]) == 2                                  # the CLI: one line, exit code 2
    assert "error" in capsys.readouterr().err


def test_image_size_the_model_cannot_divide(tmp_path):
    with pytest.raises(ValueError, match="not divisible"):
        train.run(parse(["--run-dir", str(tmp_path / "r"), "--image-size", "18", *TINY]))


def test_a_tiny_run_lowers_the_loss(tmp_path, read_metrics):
    assert train.main(["--run-dir", str(tmp_path / "r"), *TINY, "--max-steps", "40", "--log-every", "1",
                       "--lr", "3e-3", "--ckpt-every", "40"]) == 0
    losses = [r["loss"] for r in read_metrics(tmp_path / "r")]
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
