"""Image-folder dataset: class sub-folders, flat folders, corrupt files."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from lamamba.data import ImageFolderDataset


def write_image(path, value, size=(20, 12), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode).save(path)


@pytest.fixture
def class_folder(tmp_path):
    # classes created out of order: labels follow the sorted names
    write_image(tmp_path / "zebra" / "a.png", 200)
    write_image(tmp_path / "zebra" / "nested" / "b.jpg", 180)
    write_image(tmp_path / "cat" / "c.png", 10)
    write_image(tmp_path / "dog" / "d.bmp", 100)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    return tmp_path


def test_class_subfolders(class_folder):
    ds = ImageFolderDataset(class_folder, 8, flip_p=0.0)
    assert ds.class_names == ["cat", "dog", "zebra"] and ds.num_classes == 3 and len(ds) == 4
    items = [ds[i] for i in range(len(ds))]
    assert [int(y) for _, y in items] == [0, 1, 2, 2]
    for x, y in items:
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert -1 <= x.min() and x.max() <= 1
    torch.testing.assert_close(items[0][0], torch.full((3, 8, 8), 10 / 127.5 - 1))


def test_flat_folder_is_unconditional(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", 50 * i, mode="L")
    ds = ImageFolderDataset(tmp_path, 4, channels=1)
    assert ds.num_classes == 0 and ds.class_names == [] and len(ds) == 3
    x, y = ds[2]
    assert x.shape == (1, 4, 4) and int(y) == 0
    torch.testing.assert_close(x, torch.full((1, 4, 4), 100 / 127.5 - 1))


def test_conditional_false_walks_subfolders(class_folder):
    ds = ImageFolderDataset(class_folder, 8, conditional=False)
    assert len(ds) == 4 and ds.num_classes == 0 and set(ds.labels.tolist()) == {0}


def test_corrupt_file_skipped_with_one_warning(tmp_path, caplog):
    write_image(tmp_path / "a" / "good0.png", 30)
    (tmp_path / "a" / "good1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt, sorted second
    write_image(tmp_path / "b" / "good2.png", 90)
    ds = ImageFolderDataset(tmp_path, 8, flip_p=0.0)
    with caplog.at_level(logging.WARNING, logger="lamamba.data.folder"):
        epoch = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]
    warnings = [r for r in caplog.records if "good1.png" in r.getMessage()]
    assert len(warnings) == 1
    # the bad item is replaced by the next readable one (class b), never crashing the epoch
    assert [int(y) for _, y in epoch] == [0, 1, 1] * 2
    torch.testing.assert_close(epoch[1][0], epoch[2][0])


def test_all_corrupt_is_a_clear_error(tmp_path, caplog):
    for i in range(2):
        (tmp_path / f"{i}.jpg").write_bytes(b"not a jpeg")
    ds = ImageFolderDataset(tmp_path, 8)
    with caplog.at_level(logging.ERROR), pytest.raises(ValueError, match="none of the 2 images"):
        ds[0]


def test_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(tmp_path / "missing", 8)
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path, 8)
    (tmp_path / "empty_class").mkdir()
    write_image(tmp_path / "full_class" / "x.png", 1)
    with pytest.raises(ValueError, match="empty_class"):
        ImageFolderDataset(tmp_path, 8)
