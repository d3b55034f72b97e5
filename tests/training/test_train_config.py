"""Preset resolution of ``lamamba train`` flags."""
import argparse
import json
import os

import pytest

from lamamba import train
from lamamba.data.builtin import FASHION_MNIST_DIR, FASHION_MNIST_ENV
from lamamba.training.config import DIGITS_DEMO_MODEL, PRESETS, TrainConfig, resolve_config


def _config(*argv):
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return train.config_from_args(parser.parse_args(list(argv)))


def test_no_arguments_is_the_digits_demo():
    config = _config()
    assert config.preset == "digits" and config.data == "digits"
    assert config.model_args == DIGITS_DEMO_MODEL and config.ema_warmup
    assert config.weight_decay == 0.0 and config.betas == (0.9, 0.999)


def test_paper_preset_is_the_paper_recipe():
    config = resolve_config({"data": "/some/folder"}, on_cpu=False)  # the default for own data on a GPU
    assert config.preset == "paper" and config.model == "LaMamba-Diff-XL" and config.model_args == {}
    assert (config.lr, config.weight_decay, config.betas) == (1e-4, 0.0, (0.9, 0.999))
    assert (config.global_batch_size, config.ema_decay, config.ema_warmup) == (256, 0.9999, False)
    assert config.grad_clip is None and config.lr_warmup == 0


def test_own_data_on_a_cpu_defaults_to_the_small_recipe():
    config = resolve_config({"data": "/some/folder"}, on_cpu=True)
    assert config.preset == "small" and config.model_args == DIGITS_DEMO_MODEL
    assert _config("--data", "/some/folder", "--device", "cpu").preset == "small"
    assert _config("--data", "/some/folder", "--device", "cpu", "--preset", "paper").model == "LaMamba-Diff-XL"
    with pytest.raises(ValueError, match="needs --data"):
        _config("--preset", "small")


def test_flags_override_the_preset():
    config = _config("--lr", "5e-4", "--model-arg", "embed_dim=16", "--model-arg", "depths=[1,1,0,0]",
                     "--no-ema-warmup", "--grad-clip", "1.0")
    assert config.lr == 5e-4 and not config.ema_warmup and config.grad_clip == 1.0
    assert config.model_args == {**DIGITS_DEMO_MODEL, "embed_dim": 16, "depths": [1, 1, 0, 0]}
    other = _config("--model", "DiT-S/2", "--model-arg", "depth=2")
    assert other.model_args == {"depth": 2}  # the preset's LaMamba overrides do not apply to another model


def test_invalid_settings_are_value_errors():
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_config({"preset": "nope"})
    with pytest.raises(ValueError, match="ema-decay"):
        _config("--ema-decay", "1.0")
    with pytest.raises(ValueError, match="not divisible"):
        TrainConfig(global_batch_size=10).per_rank_batch(4)
    assert set(PRESETS) == {"digits", "fashion-mnist", "paper", "small"}


@pytest.mark.skipif(not os.path.isdir(os.environ.get(FASHION_MNIST_ENV, FASHION_MNIST_DIR)),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_runs(tmp_path):
    run = tmp_path / "fm"
    assert train.main(["--data", "fashion-mnist", "--run-dir", str(run), "--max-steps", "1", "--global-batch-size",
                       "4", "--model-arg", "embed_dim=8", "--model-arg", "cond_dim=16", "--model-arg",
                       "num_heads=2", "--sample-num", "0", "--no-tensorboard"]) == 0
    config = json.loads((run / "run_config.json").read_text())
    assert config["train"]["preset"] == "fashion-mnist"
    assert config["data"]["image_size"] == 32 and config["data"]["channels"] == 1
    assert config["model_config"]["input_size"] == 32
