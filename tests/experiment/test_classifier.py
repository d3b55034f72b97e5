"""The Fashion-MNIST feature network: training, TorchScript export (the TorchScriptFeatures contract), the
ensure-once helper and the class-accuracy metric, on tiny fake IDX files."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lamamba.data.builtin import FashionMNISTDataset
from lamamba.evaluation.features import TorchScriptFeatures, jit_load
from lamamba.experiment.classifier import (FashionClassifier, _batch, class_accuracy, ensure_feature_net,
                                           export_feature_net, train_classifier)


@pytest.fixture(scope="module")
def splits(fake_root):
    return (FashionMNISTDataset(32, split="train", root=fake_root),
            FashionMNISTDataset(32, split="test", root=fake_root))


@pytest.fixture(scope="module")
def trained(splits):
    return train_classifier(*splits, epochs=1, batch_size=16, seed=0)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model, acc = trained
    return export_feature_net(model, tmp_path_factory.mktemp("net") / "classifier.pt",
                              metadata={"test_accuracy": acc, "epochs": 1})


def test_forward_shapes_and_input_conventions():
    torch.manual_seed(0)
    model = FashionClassifier().eval()
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    out = model(x)
    assert set(out) == {"pool", "logits"}
    assert out["pool"].shape == (3, 128) and out["logits"].shape == (3, 10) and (out["pool"] >= 0).all()
    rgb = torch.rand(3, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(model(rgb)["logits"], model(rgb.mean(1, keepdim=True))["logits"])
    small = torch.rand(3, 1, 28, 28) * 2 - 1
    torch.testing.assert_close(model(small)["pool"], model(F.pad(small, (2, 2, 2, 2), value=-1.0))["pool"])
    for bad in (torch.zeros(2, 2, 32, 32), torch.zeros(2, 1, 64, 64), torch.zeros(1, 32, 32)):
        with pytest.raises(ValueError):
            model(bad)


def test_batches_match_dataset_and_augmentation_is_a_shift_or_flip(splits):
    train, _ = splits
    index = torch.arange(10)
    plain = _batch(train.images, index, None)
    torch.testing.assert_close(plain, torch.stack([train[i][0] for i in range(10)]))
    aug = _batch(train.images, index, torch.Generator().manual_seed(1))
    assert aug.shape == (10, 1, 32, 32)
    wide = F.pad(plain, (2, 2, 2, 2), value=-1.0)
    for a, w in zip(aug[:, 0], wide[:, 0]):
        candidates = [c for dy in range(5) for dx in range(5) for c in
                      (w[dy:dy + 32, dx:dx + 32], w[dy:dy + 32, dx:dx + 32].flip(-1))]
        assert any(torch.equal(a, c) for c in candidates)


def test_train_and_export_satisfy_the_torchscript_features_contract(trained, exported, splits):
    model, acc = trained
    assert not model.training and isinstance(acc, float) and 0.0 <= acc <= 1.0
    assert exported.is_file() and not [p for p in exported.parent.iterdir() if p.name.endswith(".tmp")]
    meta = json.loads(exported.with_suffix(".json").read_text())
    assert meta["test_accuracy"] == acc and meta["epochs"] == 1 and meta["torch"] == torch.__version__
    assert meta["feature_dim"] == 128 and meta["num_classes"] == 10

    extractor = TorchScriptFeatures(exported)
    _, test = splits
    images = F.pad(test.images[:5], (2, 2, 2, 2)).permute(0, 2, 3, 1).contiguous()  # uint8 (5, 32, 32, 1)
    out = extractor(images)
    assert out["pool"].shape == (5, 128) and out["logits"].shape == (5, 10)
    assert out["pool"].dtype == torch.float32 and extractor.logits_unavailable is None
    with torch.no_grad():
        eager = model(torch.stack([test[i][0] for i in range(5)]))
    torch.testing.assert_close(out["logits"], eager["logits"], atol=1e-4, rtol=1e-4)
    rgb = extractor(images.expand(-1, -1, -1, 3).contiguous())
    torch.testing.assert_close(rgb["pool"], out["pool"], atol=1e-5, rtol=1e-5)


def test_training_is_deterministic_and_leaves_the_global_rng_alone(splits, trained):
    train, _ = splits
    state = torch.random.get_rng_state()
    again, _ = train_classifier(train, epochs=1, batch_size=16, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    a, b = trained[0].state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other, acc = train_classifier(train, epochs=1, batch_size=16, seed=1)
    assert acc is None and not torch.equal(other.state_dict()["fc.weight"], a["fc.weight"])


def test_ensure_feature_net_is_a_noop_when_the_file_exists(tmp_path, fake_root):
    existing = tmp_path / "net.pt"
    existing.write_bytes(b"not touched")
    assert ensure_feature_net(existing, root=tmp_path / "no-data-here") == existing
    assert existing.read_bytes() == b"not touched"
    with pytest.raises(ValueError, match="not a file"):
        ensure_feature_net(tmp_path, root=fake_root)

    messages = []
    path = ensure_feature_net(tmp_path / "sub" / "new.pt", root=fake_root, epochs=1, log=messages.append)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert path.is_file() and meta["epochs"] == 1 and meta["train_images"] == 64 and meta["test_images"] == 40
    assert 0.0 <= meta["test_accuracy"] <= 1.0 and any("test accuracy" in m for m in messages)
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST"):
        ensure_feature_net(tmp_path / "other.pt", root=tmp_path / "no-data-here")


def naive_accuracy(net, images: np.ndarray, labels: np.ndarray) -> float:
    hits = 0
    for img, label in zip(images, labels):
        img = img if img.ndim == 3 else img[..., None]
        x = torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            hits += int(net(x)["logits"][0].argmax()) == int(label)
    return hits / len(images)


@pytest.mark.parametrize("shape", [(23, 32, 32), (23, 32, 32, 1), (23, 32, 32, 3), (23, 28, 28)])
def test_class_accuracy_matches_a_naive_loop(exported, shape):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, shape).astype(np.uint8)
    images[..., 8:12, :] = 255  # some structure so that several classes get predicted
    labels = rng.integers(0, 10, shape[0])
    net = jit_load(exported)
    expected = naive_accuracy(net, images, labels)
    assert class_accuracy(exported, images, labels, batch_size=7) == pytest.approx(expected)
    assert class_accuracy(net, torch.from_numpy(images), torch.from_numpy(labels)) == pytest.approx(expected)
    # a label set built from the predictions scores 1
    preds = np.array([int(net(torch.from_numpy(
        (im if im.ndim == 3 else im[..., None]).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    )["logits"].argmax()) for im in images])
    assert class_accuracy(net, images, preds) == 1.0


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_class_accuracy_rejects_bad_input(exported, tmp_path):
    images, labels = np.zeros((4, 32, 32, 1), np.uint8), np.arange(4)
    cases = [
        (images, labels[:3], "4 images but 3 labels"),
        (images.astype(np.float32), labels, "uint8"),
        (np.zeros((4, 32, 32, 2), np.uint8), labels, "shape"),
        (np.zeros((4, 16, 16), np.uint8), labels, "shape"),
        (np.zeros((4, 32), np.uint8), labels, "shape"),
        (images, labels[:, None], "1-D integer"),
        (images, labels.astype(np.float64), "1-D integer"),
        (images, labels + 7, r"labels must be in \[0, 10\)"),
        (images[:0], labels[:0], "no images"),
    ]
    for imgs, labs, message in cases:
        with pytest.raises(ValueError, match=message):
            class_accuracy(exported, imgs, labs)
    with pytest.raises(FileNotFoundError, match="not found"):
        class_accuracy(tmp_path / "missing.pt", images, labels)

    class PoolOnly(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

    with pytest.raises(ValueError, match="no 'logits'"):
        class_accuracy(torch.jit.script(PoolOnly()), images, labels)
    with pytest.raises(ValueError, match="FashionClassifier"):
        export_feature_net(torch.nn.Linear(2, 2), tmp_path / "x.pt")


@pytest.mark.skipif(os.environ.get("LAMAMBA_SLOW_TESTS") != "1", reason="set LAMAMBA_SLOW_TESTS=1 (real data, minutes)")
def test_real_fashion_mnist_reaches_90_percent(tmp_path):
    try:
        train = FashionMNISTDataset(32, split="train")
        test = FashionMNISTDataset(32, split="test")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    _, acc = train_classifier(train, test)
    assert acc >= 0.90
