"""ADM centre crop, flip and tensor conversion against naive implementations written here."""
import numpy as np
import pytest
import torch
from PIL import Image

from lamamba.data import ImageTransform, center_crop, hflip, to_tensor


def naive_adm_crop(image: Image.Image, size: int) -> np.ndarray:
    """The ADM recipe step by step: halve (BOX) while short side >= 2*size, BICUBIC to short side, crop."""
    w, h = image.size
    while min(w, h) >= 2 * size:
        w, h = w // 2, h // 2
        image = image.resize((w, h), Image.BOX)
    s = size / min(w, h)
    image = image.resize((round(w * s), round(h * s)), Image.BICUBIC)
    a = np.array(image)
    top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return a[top:top + size, left:left + size]


def random_image(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.mark.parametrize("w,h,size", [(64, 48, 16), (100, 37, 16), (37, 100, 8), (12, 20, 16), (33, 33, 32),
                                      (257, 300, 64), (8, 8, 8)])
def test_center_crop_matches_naive(w, h, size):
    image = random_image(w, h, seed=w * h)
    out = center_crop(image, size)
    assert out.size == (size, size)
    np.testing.assert_array_equal(np.array(out), naive_adm_crop(image, size))


def test_box_halving_is_block_mean():
    """A 32x48 image cropped to 16 is halved once (BOX = 2x2 block mean, ADM's anti-aliasing), resized by a
    factor 1 (no change) and centre-cropped: the result is the block mean of the central columns."""
    a = np.random.default_rng(1).integers(0, 256, (32, 48), dtype=np.uint8)
    out = np.array(center_crop(Image.fromarray(a, "L"), 16)).astype(float)
    block = a.reshape(16, 2, 24, 2).astype(float).mean(axis=(1, 3))[:, 4:20]
    assert np.abs(out - block).max() <= 1.0  # PIL's fixed-point rounding


def test_to_tensor_range_and_layout():
    a = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = to_tensor(Image.fromarray(a, "RGB"))
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    expected = (torch.from_numpy(a).permute(2, 0, 1).float() / 255 - 0.5) / 0.5  # ToTensor + Normalize(0.5, 0.5)
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)
    grey = to_tensor(Image.fromarray(a, "RGB"), channels=1)
    assert grey.shape == (1, 5, 7) and grey.min() >= -1 and grey.max() <= 1
    with pytest.raises(ValueError, match="channels"):
        to_tensor(Image.fromarray(a, "RGB"), channels=2)


def test_flip():
    image = random_image(20, 10, seed=3)
    expected = to_tensor(Image.fromarray(np.array(center_crop(image, 8))[:, ::-1].copy()))
    torch.testing.assert_close(ImageTransform(8, flip_p=1.0)(image), expected)
    torch.testing.assert_close(hflip(expected), ImageTransform(8, flip_p=0.0)(image))
    torch.manual_seed(0)
    t = ImageTransform(8, flip_p=0.5)
    flipped = sum(torch.equal(t(image), expected) for _ in range(200))
    assert 70 < flipped < 130
    with pytest.raises(ValueError, match="flip_p"):
        ImageTransform(8, flip_p=1.5)


def test_palette_and_grey_inputs_are_converted():
    p = random_image(30, 20, seed=4).convert("P")
    assert ImageTransform(16, flip_p=0)(p).shape == (3, 16, 16)
    grey = random_image(30, 20, seed=5, mode="L")
    x = ImageTransform(16, channels=1, flip_p=0)(grey)
    assert x.shape == (1, 16, 16)
    np.testing.assert_allclose(x[0].numpy(), naive_adm_crop(grey, 16) / 127.5 - 1, atol=1e-6)
