"""Shared fixtures of the training tests: a tiny LaMamba-Diff on digits that trains in a fraction of a second."""
import json

import pytest

from lamamba import train

TINY_ARGS = ["--model-arg", "embed_dim=8", "--model-arg", "cond_dim=16", "--global-batch-size", "8",
             "--sample-num", "0", "--no-tensorboard", "--log-every", "1"]


@pytest.fixture
def train_tiny():
    """``train_tiny(run_dir, *flags)``: ``lamamba train`` in this process with the tiny model; the exit code."""
    def run(run_dir, *extra):
        return train.main(["--run-dir", str(run_dir), *TINY_ARGS, *map(str, extra)])
    return run


@pytest.fixture
def read_metrics():
    """``read_metrics(run_dir)``: the records of ``metrics.jsonl``."""
    def read(run_dir):
        with open(run_dir / "metrics.jsonl") as f:
            return [json.loads(line) for line in f]
    return read


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory):
    """A tiny random ``AutoencoderKL`` (downsampling 2, 4 latent channels) saved with ``save_pretrained``."""
    diffusers = pytest.importorskip("diffusers")
    import torch

    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=16,
    )
    path = tmp_path_factory.mktemp("tiny_vae")
    model.save_pretrained(path)
    return path
