"""End to end: `lamamba evaluate` and the training hook, with a tiny stand-in network (no download)."""
import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lamamba.evaluation import cli
from lamamba.evaluation.features import load_feature_extractor
from lamamba.evaluation.metrics import frechet_distance
from lamamba.evaluation.suite import compute_stats, evaluate_samples

pytestmark = [  # tiny sets on purpose; test_pixel_features_on_small_grey_images checks the warning
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::lamamba.evaluation.metrics.FewSamplesWarning"),
]


def _run(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def _images(seed, shape):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def ref_and_samples(tmp_path):
    np.savez(tmp_path / "ref.npz", arr_0=_images(0, (40, 16, 16, 3)))
    folder = tmp_path / "samples" / "class0"
    folder.mkdir(parents=True)
    for i, img in enumerate(_images(1, (30, 16, 16, 3))):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return tmp_path / "ref.npz", tmp_path / "samples"


def test_evaluate_npz_against_folder_reports_every_metric_with_its_network(
        tmp_path, ref_and_samples, tiny_inception_path, capsys):
    ref, samples = ref_and_samples
    out = tmp_path / "metrics.json"
    assert _run([str(ref), str(samples), "--inception", tiny_inception_path, "--out", str(out),
                 "--device", "cpu", "--batch-size", "16"]) == 0
    report = json.loads(out.read_text())
    assert report["feature_network"]["weights"] == tiny_inception_path
    metrics = report["metrics"]
    assert set(metrics) == {"fid", "sfid", "inception_score", "precision", "recall"}
    for entry in metrics.values():
        assert entry["value"] is not None and "inception-v3-tf-2015-12-05" in entry["features"]
    assert (metrics["fid"]["num_ref"], metrics["fid"]["num_samples"]) == (40, 30)
    assert "(8-d)" in metrics["fid"]["features"] and "(28-d)" in metrics["sfid"]["features"]
    assert metrics["inception_score"]["splits"] == 10 and metrics["inception_score"]["value"] >= 1.0
    assert (report["samples"]["num_images"], report["samples"]["image_shape"]) == (30, [16, 16, 3])
    table = capsys.readouterr().out
    for title in ("FID", "sFID", "Inception Score", "Precision", "Recall"):
        assert title in table


def test_a_set_against_itself(ref_and_samples, tiny_inception_path, tmp_path):
    ref, _ = ref_and_samples
    _run([str(ref), str(ref), "--inception", tiny_inception_path, "--metrics", "fid,pr", "--out",
          str(tmp_path / "m.json")])
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert abs(metrics["fid"]["value"]) < 1e-6
    assert metrics["precision"]["value"] == metrics["recall"]["value"] == 1.0
    assert "sfid" not in metrics and "inception_score" not in metrics


def test_make_ref_then_evaluate_from_the_statistics_file(ref_and_samples, tiny_inception_path, tmp_path):
    ref, samples = ref_and_samples
    stats = tmp_path / "stats" / "ref_stats.npz"
    assert _run(["--make-ref", str(ref), str(stats), "--inception", tiny_inception_path,
                 "--ref-features", "25"]) == 0
    _run([str(ref), str(samples), "--inception", tiny_inception_path, "--out", str(tmp_path / "direct.json")])
    _run([str(stats), str(samples), "--inception", tiny_inception_path, "--out", str(tmp_path / "file.json")])
    direct = json.loads((tmp_path / "direct.json").read_text())["metrics"]
    from_file = json.loads((tmp_path / "file.json").read_text())["metrics"]
    assert from_file["fid"]["value"] == pytest.approx(direct["fid"]["value"], rel=1e-6)
    assert from_file["sfid"]["value"] == pytest.approx(direct["sfid"]["value"], rel=1e-6)
    assert from_file["precision"]["num_ref"] == 25  # the random subset kept for the k-NN manifolds


def test_adm_precomputed_statistics_are_used_for_fid(tmp_path, ref_and_samples, tiny_inception_path):
    _, samples = ref_and_samples
    rng = np.random.default_rng(2)
    mu, sigma = rng.random(8), np.diag(rng.random(8) + 0.1)
    np.savez(tmp_path / "adm_ref.npz", arr_0=_images(3, (20, 16, 16, 3)), mu=mu, sigma=sigma,
             mu_s=np.zeros(28), sigma_s=np.eye(28))
    _run([str(tmp_path / "adm_ref.npz"), str(samples), "--inception", tiny_inception_path, "--out",
          str(tmp_path / "m.json")])
    report = json.loads((tmp_path / "m.json").read_text())
    ext = load_feature_extractor("inception", tiny_inception_path)
    s = compute_stats(samples, ext)
    expected = frechet_distance(mu, sigma, s.pool.mu, s.pool.sigma)
    assert report["metrics"]["fid"]["value"] == pytest.approx(expected)
    assert report["metrics"]["fid"]["num_ref"] is None  # precomputed: ADM files do not record the count
    assert report["metrics"]["precision"]["num_ref"] == 20  # k-NN features still come from arr_0
    assert "ADM statistics" in report["reference"]["origin"]


def test_pixel_features_on_small_grey_images(tmp_path):
    np.savez(tmp_path / "digits.npz", arr_0=_images(4, (100, 8, 8)))
    np.savez(tmp_path / "gen.npz", arr_0=_images(5, (30, 8, 8, 1)))
    _run([str(tmp_path / "digits.npz"), str(tmp_path / "gen.npz"), "--features", "pixels", "--out",
          str(tmp_path / "m.json")])
    report = json.loads((tmp_path / "m.json").read_text())
    metrics = report["metrics"]
    assert report["feature_network"]["name"] == "pixels"
    assert metrics["fid"]["features"] == "pixels pool (64-d)" and metrics["precision"]["value"] is not None
    assert "no class logits" in metrics["inception_score"]["unavailable"]
    assert "no spatial" in metrics["sfid"]["unavailable"]
    assert any("30 images for 64-dimensional" in w for w in report["warnings"])  # too few: warned


def test_statistics_of_another_network_are_an_error(tmp_path, ref_and_samples, tiny_inception_path):
    ref, samples = ref_and_samples
    _run(["--make-ref", str(ref), str(tmp_path / "px.npz"), "--features", "pixels"])
    with pytest.raises(ValueError, match="statistics computed with 'pixels'"):
        _run([str(tmp_path / "px.npz"), str(samples), "--inception", tiny_inception_path])


def test_mismatched_image_sizes_between_sets_fail_for_pixels(tmp_path):
    np.savez(tmp_path / "a.npz", arr_0=_images(6, (20, 4, 4, 1)))
    np.savez(tmp_path / "b.npz", arr_0=_images(7, (20, 5, 5, 1)))
    with pytest.raises(ValueError, match="different feature spaces"):
        _run([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--features", "pixels", "--metrics", "fid"])


@pytest.mark.parametrize("argv,match", [
    (["only_one.npz"], "expected REF and SAMPLES"),
    (["a", "b", "--features", "pixels", "--inception", "x.pt"], "--inception applies"),
    (["a", "b", "--feature-net", "x.pt"], "--feature-net needs"),
    (["a", "b", "--metrics", "fid,kid"], "unknown"),
    (["a", "b", "--num-images", "0"], "--num-images must be at least 1"),
])
def test_argument_errors_are_clear(argv, match):
    with pytest.raises(ValueError, match=match):
        _run(argv)


def test_training_hook_on_float_samples(tiny_inception_path):
    ext = load_feature_extractor("inception", tiny_inception_path)
    ref = compute_stats(_images(8, (40, 16, 16, 3)), ext, keep_features=None)
    samples = torch.rand(24, 3, 16, 16) * 2 - 1  # model output convention: (N, C, H, W) in [-1, 1]
    result = evaluate_samples(samples, ref, ext, metrics=("fid", "pr"), batch_size=10)
    assert set(result) == {"fid", "precision", "recall", "num_samples", "feature_network"}
    assert result["num_samples"] == 24 and result["feature_network"] == "inception-v3-tf-2015-12-05"
    assert result["fid"] >= 0


def test_training_hook_raises_for_unavailable_metrics():
    ext = load_feature_extractor("pixels")
    ref = compute_stats(_images(9, (20, 4, 4, 1)), ext)
    with pytest.raises(ValueError, match="inception_score cannot be computed: pixel features"):
        evaluate_samples(_images(10, (12, 4, 4, 1)), ref, ext, metrics=("fid", "is"))


def test_adm_statistics_are_ignored_for_another_network(tmp_path):
    np.savez(tmp_path / "adm.npz", arr_0=_images(11, (30, 4, 4, 1)), mu=np.zeros(2048), sigma=np.eye(2048))
    _run([str(tmp_path / "adm.npz"), str(tmp_path / "adm.npz"), "--features", "pixels", "--metrics", "fid",
          "--out", str(tmp_path / "m.json")])
    report = json.loads((tmp_path / "m.json").read_text())
    assert "statistics ignored" in report["reference"]["origin"]
    assert report["metrics"]["fid"]["features"] == "pixels pool (16-d)"
    assert abs(report["metrics"]["fid"]["value"]) < 1e-9


def test_two_statistics_files_need_no_feature_network(tmp_path, monkeypatch, capsys):
    from lamamba.evaluation import features
    from lamamba.evaluation.inputs import FeatureStats, save_stats
    from lamamba.evaluation.metrics import GaussianStats

    rng = np.random.default_rng(0)
    for name in ("ref", "samples"):
        f = rng.normal(size=(64, 4))
        stats = FeatureStats(network=features.feature_network_name("inception"), num_images=64, origin=name,
                             pool=GaussianStats.from_features(f), network_info={"name": "inception"})
        save_stats(tmp_path / f"{name}.npz", stats)

    def offline(*args, **kwargs):
        raise AssertionError("the feature network was loaded")
    monkeypatch.setattr(features, "load_feature_extractor", offline)
    assert _run([str(tmp_path / "ref.npz"), str(tmp_path / "samples.npz"), "--metrics", "fid",
                 "--no-download"]) == 0
    assert "FID" in capsys.readouterr().out


def test_few_sample_warning_is_one_line(tmp_path, capsys):
    np.savez(tmp_path / "a.npz", arr_0=_images(0, (20, 8, 8)))
    np.savez(tmp_path / "b.npz", arr_0=_images(1, (20, 8, 8)))
    assert _run([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--features", "pixels", "--metrics",
                 "fid"]) == 0
    err = capsys.readouterr().err
    warning_lines = [line for line in err.splitlines() if "warning" in line]
    assert warning_lines and all(line.startswith("lamamba evaluate: warning: ") for line in warning_lines)
    assert "warnings.warn(" not in err
