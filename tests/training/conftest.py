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
