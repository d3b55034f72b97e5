"""build_dataset: names, paths, defaults and errors."""
import numpy as np
import pytest
from PIL import Image

from lamamba.data import BUILTIN_DATASETS, DigitsDataset, ImageFolderDataset, build_dataset


def test_builtin_names():
    ds = build_dataset("digits")
    assert isinstance(ds, DigitsDataset) and (ds.image_size, ds.channels, ds.num_classes, ds.flip_p) == (16, 1, 10, 0)
    ds = build_dataset("digits", image_size=32, split="test", channels=3, test_fraction=0.2)
    assert ds[0][0].shape == (3, 32, 32) and 350 <= len(ds) <= 370
    assert set(BUILTIN_DATASETS) == {"digits", "fashion-mnist"}


def test_folder(tmp_path):
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "a.png")
    ds = build_dataset(str(tmp_path), image_size=8)
    assert isinstance(ds, ImageFolderDataset) and ds.flip_p == 0.5 and ds.channels == 3 and ds.num_classes == 0
    assert build_dataset(tmp_path, image_size=8, channels=1, flip_p=0.0)[0][0].shape == (1, 8, 8)
    with pytest.raises(ValueError, match="image_size is required"):
        build_dataset(tmp_path)
    with pytest.raises(ValueError, match="split"):
        build_dataset(tmp_path, image_size=8, split="test")


def test_unknown_names_list_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*'digits', 'fashion-mnist'"):
        build_dataset("mnist", image_size=8)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        build_dataset(tmp_path / "file.txt", image_size=8)
