"""Reading images (.npz, folders, arrays) and statistics files; clear errors for bad inputs."""
import numpy as np
import pytest
import torch
from PIL import Image

from lamamba.evaluation.inputs import (
    ArrayImages, FeatureStats, FolderImages, NpzImages, load_stats, open_input, save_stats,
)
from lamamba.evaluation.metrics import GaussianStats


def _collect(source, batch_size, limit=None):
    return np.concatenate(list(source.batches(batch_size, limit)))


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("shape", [(7, 5, 6, 3), (7, 5, 6)])
def test_npz_images_stream_round_trip(tmp_path, compressed, shape):
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "batch.npz"
    (np.savez_compressed if compressed else np.savez)(path, arr_0=images, arr_1=np.arange(7))
    source = NpzImages(path)
    expected = images if images.ndim == 4 else images[..., None]
    assert source.num_images == 7 and source.image_shape == expected.shape[1:]
    np.testing.assert_array_equal(_collect(source, 3), expected)
    np.testing.assert_array_equal(_collect(source, 2, limit=5), expected[:5])


def test_npz_rejects_float_images(tmp_path):
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        open_input(tmp_path / "f.npz")


def test_npz_without_images_or_stats_is_an_error(tmp_path):
    np.savez(tmp_path / "x.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match="neither images"):
        open_input(tmp_path / "x.npz")


def test_empty_npz_images_are_an_error(tmp_path):
    np.savez(tmp_path / "e.npz", arr_0=np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="no images"):
        open_input(tmp_path / "e.npz")


def test_folder_reads_recursively_sorted_and_keeps_grey(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (4, 8, 8), dtype=np.uint8)
    (tmp_path / "b").mkdir()
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(tmp_path / ("b" if i % 2 else ".") / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    source, stats = open_input(tmp_path)
    assert stats is None and isinstance(source, FolderImages)
    assert source.num_images == 4 and source.image_shape == (8, 8, 1)
    order = [0, 2, 1, 3]  # sorted paths: 0.png, 2.png, b/1.png, b/3.png
    np.testing.assert_array_equal(_collect(source, 3)[..., 0], imgs[order])


def test_folder_with_mismatched_sizes_is_an_error(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match="mismatched image sizes.*9x8"):
        _collect(FolderImages(tmp_path), 4)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no images found"):
        open_input(tmp_path)


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_input(tmp_path / "nope.npz")


def test_float_tensor_is_quantised_like_saved_samples():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.7]).view(1, 1, 2, 3)
    got = ArrayImages(x).images[0, ..., 0].ravel()
    expected = np.clip(np.floor(127.5 * x.numpy().ravel() + 128.0), 0, 255)  # DiT's sample_ddp.py rule
    np.testing.assert_array_equal(got, expected)


def _stats(rng, d=4, with_spatial=True):
    feats = rng.standard_normal((20, d))
    return FeatureStats(
        network="pixels", num_images=20, origin="test", pool=GaussianStats.from_features(feats),
        spatial=GaussianStats.from_features(rng.standard_normal((20, 3))) if with_spatial else None,
        pool_features=feats[:5].astype(np.float32), image_shape=(2, 2, 1),
        network_info={"name": "pixels", "description": "test"},
    )


@pytest.mark.parametrize("with_spatial", [True, False])
def test_stats_file_round_trip(tmp_path, with_spatial):
    stats = _stats(np.random.default_rng(2), with_spatial=with_spatial)
    save_stats(tmp_path / "s.npz", stats)
    back = load_stats(tmp_path / "s.npz")
    assert (back.network, back.num_images, back.image_shape) == ("pixels", 20, (2, 2, 1))
    assert back.network_info == stats.network_info
    np.testing.assert_array_equal(back.pool.mu, stats.pool.mu)
    np.testing.assert_array_equal(back.pool.sigma, stats.pool.sigma)
    np.testing.assert_array_equal(back.pool_features, stats.pool_features)
    assert (back.spatial is None) == (not with_spatial)
    if with_spatial:
        np.testing.assert_array_equal(back.spatial.sigma, stats.spatial.sigma)
    images, again = open_input(tmp_path / "s.npz")
    assert images is None and again.network == "pixels"


def test_stats_file_must_be_npz(tmp_path):
    with pytest.raises(ValueError, match=r"\.npz"):
        save_stats(tmp_path / "s.pkl", _stats(np.random.default_rng(3)))


def test_adm_reference_batch_gives_images_and_inception_stats(tmp_path):
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8),
             mu=np.zeros(5), sigma=np.eye(5), mu_s=np.ones(2), sigma_s=np.eye(2))
    images, stats = open_input(tmp_path / "ref.npz")
    assert images.num_images == 3
    assert stats.network == "inception-v3-tf-2015-12-05" and stats.num_images is None
    assert stats.pool.mu.shape == (5,) and stats.spatial.mu.shape == (2,)
    assert stats.logits is None and "logits" in stats.logits_note
