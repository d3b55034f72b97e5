"""Shared fixtures of the experiment tests: a tiny fake Fashion-MNIST directory of gzipped IDX files."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """uint8 IDX (type code 0x08): 0, 0, 0x08, ndim, big-endian uint32 dims, then the bytes; gzipped."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(raw + array.astype(np.uint8).tobytes()))


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory) -> Path:
    """64 train / 40 test 28x28 images, labels 0..9; class c is a bright horizontal band at row 2c (learnable
    in one epoch)."""
    root = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for stem, n in (("train", 64), ("t10k", 40)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 3:2 * c + 6] = 250
        write_idx_gz(root / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx_gz(root / f"{stem}-labels-idx1-ubyte.gz", labels)
    return root
