"""Built-in datasets: digits, the IDX reader, Fashion-MNIST (tiny fake files; the real ones if installed)."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lamamba.data import DigitsDataset, FashionMNISTDataset, read_idx
from lamamba.data.builtin import FASHION_MNIST_DIR


def write_idx(path: Path, array: np.ndarray, code: int, compress: bool = False) -> None:
    """The IDX format written from its definition: 0, 0, type code, ndim, big-endian dims, big-endian data."""
    big = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(big).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def naive_bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and edge clamping, one output pixel at a time."""
    n = img.shape[0]
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            y = min(max((i + 0.5) * n / size - 0.5, 0), n - 1)
            x = min(max((j + 0.5) * n / size - 0.5, 0), n - 1)
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, n - 1), min(x0 + 1, n - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * (1 - dx) * img[y0, x0] + (1 - dy) * dx * img[y0, x1]
                         + dy * (1 - dx) * img[y1, x0] + dy * dx * img[y1, x1])
    return out


def test_digits_shapes_range_labels():
    from sklearn.datasets import load_digits

    everything = DigitsDataset(split="all", image_size=8)
    assert len(everything) == 1797 and everything.num_classes == 10 and everything.channels == 1
    raw = load_digits()
    x, y = everything[5]
    assert x.shape == (1, 8, 8) and y.dtype == torch.int64 and int(y) == raw.target[5]
    torch.testing.assert_close(x[0], torch.from_numpy(raw.images[5] / 8 - 1).float())

    train = DigitsDataset()
    x, y = train[0]
    assert x.shape == (1, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert DigitsDataset(channels=3)[0][0].shape == (3, 16, 16)


def test_digits_upsampling_is_bilinear():
    from sklearn.datasets import load_digits

    img = load_digits().images[7] / 8 - 1
    x, _ = DigitsDataset(split="all", image_size=20)[7]
    np.testing.assert_allclose(x[0].numpy(), naive_bilinear(img, 20), atol=1e-5)


def test_digits_split_is_deterministic_stratified_and_disjoint():
    train, test = DigitsDataset(split="train"), DigitsDataset(split="test")
    assert len(train) + len(test) == 1797 and 170 <= len(test) <= 190
    counts = np.bincount(test.labels.numpy(), minlength=10)
    assert counts.min() >= 17 and counts.max() <= 19  # ~10% of each class
    train_set = {tuple(x.flatten().tolist()) for x in train.images}
    assert not any(tuple(x.flatten().tolist()) in train_set for x in test.images[:50])
    assert torch.equal(DigitsDataset(split="test").images, test.images)
    with pytest.raises(ValueError, match="split"):
        DigitsDataset(split="val")
    with pytest.raises(ValueError, match="test_fraction"):
        DigitsDataset(split="test", test_fraction=0.0)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                                        (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx(tmp_path, code, dtype, compress):
    a = (np.arange(2 * 3 * 5).reshape(2, 3, 5) * 7 - 50).astype(dtype) if code != 0x08 else \
        np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / "a.idx", a, code, compress)
    out = read_idx(tmp_path / "a.idx")
    assert out.dtype.isnative and out.shape == a.shape
    np.testing.assert_array_equal(out, a)


def test_read_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 2), np.uint8), 0x08)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="promises shape"):
        read_idx(tmp_path / "short")


@pytest.fixture
def fake_fashion(tmp_path):
    rng = np.random.default_rng(0)
    for stem, n in (("train", 6), ("t10k", 4)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 0x08, True)
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", np.arange(n) % 10, 0x08, True)
    return tmp_path


def test_fashion_mnist_from_env_and_padding(fake_fashion, monkeypatch):
    monkeypatch.setenv("LAMAMBA_FASHION_MNIST", str(fake_fashion))
    train, test = FashionMNISTDataset(), FashionMNISTDataset(32, split="test")
    assert len(train) == 6 and len(test) == 4 and train.num_classes == 10
    raw = read_idx(fake_fashion / "t10k-images-idx3-ubyte.gz")
    x, y = test[3]
    assert x.shape == (1, 32, 32) and int(y) == 3
    torch.testing.assert_close(x[0, 2:30, 2:30], torch.from_numpy(raw[3] / 127.5 - 1).float())
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[0][border] == -1).all()
    assert FashionMNISTDataset(root=fake_fashion, channels=3)[0][0].shape == (3, 28, 28)
    with pytest.raises(ValueError, match="28 .* or 32"):
        FashionMNISTDataset(64)


def test_fashion_mnist_missing_files_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionMNISTDataset(root=tmp_path)


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz").exists(),
                    reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("LAMAMBA_FASHION_MNIST", raising=False)
    test = FashionMNISTDataset(split="test")
    assert len(test) == 10_000 and test.images.shape == (10_000, 1, 28, 28)
    assert np.bincount(test.labels.numpy()).tolist() == [1000] * 10
    x, _ = test[0]
    assert x.min() == -1 and x.max() <= 1
