"""``lamamba experiment fashion-mnist``: the four stages end to end through the CLI on tiny runs and fake IDX
files, resumability, the training command line, the throughput / noise helpers and the user errors."""
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lamamba.experiment.fashion_mnist as fm
from lamamba.cli import main
from lamamba.experiment.fashion_mnist import ExperimentConfig, Run
from lamamba.experiment.report import format_tables

TINY_LAMAMBA = dict(embed_dim=16, cond_dim=32, num_heads=2, depths=(1, 1, 1, 0), decoder_depths=(0, 1, 1, 1),
                    ssm_ratio=1.0, patch_size=2, window_size=4)
TINY_DIT = dict(hidden_size=32, depth=1, num_heads=2)
TINY_RUNS = (
    Run("tiny-lamamba", "LaMamba-Diff-S", TINY_LAMAMBA, "4", "tiny LaMamba", dict(params_m=32, gflops=3.19, fid=55.68)),
    Run("tiny-dit", "DiT-S/2", TINY_DIT, "4", "tiny DiT", dict(params_m=33, gflops=6.06, fid=68.40), seed=1),
)
# a few seconds for all stages on CPU (the classifier feature net trains 4 epochs on the 64 fake images)
TINY_ARGS = ["--train-images", "8", "--batch-size", "4", "--num-samples", "20", "--sample-steps", "2",
             "--sample-batch", "10", "--num-workers", "0", "--device", "cpu", "--features", "classifier"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread, and 10x slower with two when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def patch_registry(mp: pytest.MonkeyPatch) -> tuple[str, ...]:
    """The two tiny runs in the registry, as group ``tiny`` and as Table 4 (so the report has a table).
    GROUPS / RUNS are mutated in place: report.py and cli.py hold the same dict objects."""
    for run in TINY_RUNS:
        mp.setitem(fm.RUNS, run.name, run)
    names = tuple(r.name for r in TINY_RUNS)
    mp.setitem(fm.GROUPS, "tiny", names)
    mp.setitem(fm.GROUPS, "table4", names)
    return names


@pytest.fixture
def tiny_registry(monkeypatch) -> tuple[str, ...]:
    return patch_registry(monkeypatch)


def cli(out: Path, root: Path, *extra: str) -> int:
    return main(["experiment", "fashion-mnist", "--out", str(out), "--data-root", str(root), *TINY_ARGS, *extra])


@pytest.fixture(scope="module")
def experiment(fake_root, tmp_path_factory):
    """One full run of all four stages on the two tiny runs; returns the experiment directory."""
    out = tmp_path_factory.mktemp("experiment")
    with pytest.MonkeyPatch.context() as mp:
        patch_registry(mp)
        mp.setenv("LAMAMBA_FASHION_MNIST", str(fake_root))  # train_run sets it; restore it afterwards
        assert cli(out, fake_root, "--runs", "tiny") == 0
    return out


def test_all_stages_end_to_end(experiment, tiny_registry):
    for name in tiny_registry:
        directory = experiment / "runs" / name
        train = json.loads((directory / "train.json").read_text())
        assert train["run"] == name and train["steps"] == 2 and train["batch_size"] == 4
        assert train["train_images"] == 8 and train["images_per_sec"] > 0
        assert train["environment"]["device"] == "cpu" and train["environment"]["card"]
        assert (directory / "command.txt").read_text().startswith("lamamba train ")

        with np.load(directory / "samples" / "samples.npz") as data:
            images, labels = data["arr_0"], data["arr_1"]
        assert images.dtype == np.uint8 and images.shape == (20, 32, 32, 1)
        assert np.bincount(labels, minlength=10).tolist() == [2] * 10

        scores = json.loads((directory / "scores.json").read_text())
        assert set(scores) == {"classifier", "pixels"}
        classifier = scores["classifier"]
        assert math.isfinite(classifier["fid"]) and 0.0 <= classifier["class_accuracy"] <= 1.0
        assert classifier["num_samples"] == 20 and classifier["num_ref"] == 40
        assert 0.0 <= scores["pixels"]["noise_fraction"] <= 1.0 and scores["pixels"]["num_samples"] == 20

        assert (experiment / "grids" / f"{name}.png").is_file()
    assert (experiment / "classifier.pt").is_file() and (experiment / "reference-classifier.npz").is_file()

    results = json.loads((experiment / "results.json").read_text())
    rows = results["runs"]
    assert [r["run"] for r in rows] == list(tiny_registry)
    for row in rows:
        scores = json.loads((experiment / "runs" / row["run"] / "scores.json").read_text())
        assert row["fd_classifier"] == scores["classifier"]["fid"]
        assert row["class_accuracy"] == scores["classifier"]["class_accuracy"]
        assert row["noise_fraction"] == scores["pixels"]["noise_fraction"]
        assert row["fid"] is None and row["params_m"] < 1 and row["gflops"] > 0 and row["train_images_per_s"] > 0
    assert results["config"]["features"] == ["classifier"] and results["cards"]

    md = (experiment / "results.md").read_text()
    assert "8 training images per run" in md and "### Table 4" in md
    table = [line for line in md.splitlines() if line.startswith("| tiny ")]
    assert len(table) == 2 and all(line.count("|") == 11 for line in table)
    assert "| tiny DiT |" in md and "33 / 6.06 / 68.40" in md


def test_rerun_is_a_noop(experiment, tiny_registry, fake_root, monkeypatch, caplog):
    from lamamba import sample, train
    from lamamba.experiment import classifier

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(train, "run", forbidden)
    monkeypatch.setattr(sample, "run", forbidden)
    monkeypatch.setattr(classifier, "ensure_feature_net", forbidden)
    monkeypatch.setenv("LAMAMBA_FASHION_MNIST", str(fake_root))
    run_files = sorted(p for p in (experiment / "runs").rglob("*") if p.is_file())
    kept = run_files + [experiment / "classifier.pt", experiment / "reference-classifier.npz"]
    before = {p: p.stat().st_mtime_ns for p in kept}
    with caplog.at_level(logging.INFO, logger="lamamba.experiment"):
        assert cli(experiment, fake_root, "--runs", "tiny") == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == before
    assert sorted(p for p in (experiment / "runs").rglob("*") if p.is_file()) == run_files
    text = caplog.text
    for name in ("tiny-lamamba", "tiny-dit"):
        for stage in ("trained", "sampled", "scored"):
            assert f"{name}: {stage} already" in text


def test_an_interrupted_experiment_continues(experiment, tiny_registry, fake_root, tmp_path, monkeypatch):
    """Only the missing results are redone: training resumes from its final checkpoint (no new steps), and
    seeded sampling of the same checkpoint gives the same samples and scores again."""
    from lamamba import train

    out = tmp_path / "out"
    shutil.copytree(experiment, out)
    lamamba_dir, dit_dir = out / "runs" / "tiny-lamamba", out / "runs" / "tiny-dit"
    old_train = json.loads((lamamba_dir / "train.json").read_text())
    old_scores = json.loads((dit_dir / "scores.json").read_text())
    with np.load(dit_dir / "samples" / "samples.npz") as data:
        old_images = data["arr_0"]
    metrics = (lamamba_dir / "metrics.jsonl").read_text()
    checkpoints = sorted(p.name for p in (lamamba_dir / "checkpoints").iterdir())
    (lamamba_dir / "train.json").unlink()
    (dit_dir / "samples" / "samples.npz").unlink()
    (dit_dir / "scores.json").unlink()

    calls = []
    real_run = train.run
    monkeypatch.setattr(train, "run", lambda args: calls.append(args.run_dir) or real_run(args))
    monkeypatch.setenv("LAMAMBA_FASHION_MNIST", str(fake_root))
    assert cli(out, fake_root, "--runs", "tiny") == 0

    assert calls == [str(lamamba_dir)]
    assert (lamamba_dir / "metrics.jsonl").read_text() == metrics
    assert sorted(p.name for p in (lamamba_dir / "checkpoints").iterdir()) == checkpoints
    new_train = json.loads((lamamba_dir / "train.json").read_text())
    for key in ("steps", "train_images", "images_per_sec", "windows", "final_loss"):
        assert new_train[key] == old_train[key]
    with np.load(dit_dir / "samples" / "samples.npz") as data:
        np.testing.assert_array_equal(data["arr_0"], old_images)
    # the same samples give the same scores up to float rounding: the stages set the CPU threads from the cores
    # idle at their start (lamamba.distributed.set_cpu_threads), and another thread count sums the
    # feature statistics in another order (FID moved by 3e-8 relative in one full-suite run)
    new_scores = json.loads((dit_dir / "scores.json").read_text())
    assert new_scores.keys() == old_scores.keys()
    for net, scores in old_scores.items():
        assert new_scores[net].keys() == scores.keys()
        for key, value in scores.items():
            assert new_scores[net][key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key


def test_train_argv_carries_the_paper_recipe(tmp_path):
    cfg = ExperimentConfig(out=str(tmp_path), train_images=10, batch_size=4, device="cpu")
    run = Run("x", "LaMamba-Diff-S", dict(depths=(1, 1, 1, 0), attention="none", shift=False), "5", "x", {}, seed=3)
    argv = fm.train_argv(cfg, run)

    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert cfg.max_steps == 3 and value("--max-steps") == "3"
    assert float(value("--lr")) == 1e-4 and value("--weight-decay") == "0" and "--ema-warmup" in argv
    assert value("--model") == "LaMamba-Diff-S" and value("--global-batch-size") == "4" and value("--seed") == "3"
    assert value("--data") == "fashion-mnist" and value("--image-size") == "32"
    assert value("--run-dir") == str(tmp_path / "runs" / "x") and value("--sample-num") == "0"
    model_args = [argv[i + 1] for i, a in enumerate(argv) if a == "--model-arg"]
    assert model_args == ['depths=[1, 1, 1, 0]', 'attention="none"', "shift=false"]
    assert "--no-compile" in argv and "--compile" not in argv
    cfg.compile = True
    assert "--compile" in fm.train_argv(cfg, run) and "--no-compile" not in fm.train_argv(cfg, run)
    assert not {"--cuda-graphs", "--no-cuda-graphs"} & set(fm.train_argv(cfg, run))  # lamamba train decides
    cfg.cuda_graphs = False
    assert "--no-cuda-graphs" in fm.train_argv(cfg, run)
    cfg.cuda_graphs = True
    assert "--cuda-graphs" in fm.train_argv(cfg, run)
    cfg.compile = False
    with pytest.raises(ValueError, match="add --compile"):
        cfg.validate()
    cfg.compile, cfg.cuda_graphs = True, None
    assert "--noise-offset" not in argv
    cfg.noise_offset = 0.1
    assert fm.train_argv(cfg, run)[-2:] == ["--noise-offset", "0.1"]

    # and `lamamba train` reads it back as intended
    from lamamba import train
    resolved = train.config_from_args(fm._parse(train, argv))
    assert resolved.lr == 1e-4 and resolved.weight_decay == 0 and resolved.ema_warmup and resolved.max_steps == 3
    assert resolved.model_args == dict(depths=[1, 1, 1, 0], attention="none", shift=False)


def test_throughput_is_the_median_of_the_steady_windows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [dict(step=1, loss=1.0, images_per_sec=5.0), dict(step=2, loss=0.5), dict(step=3, loss=0.4,
            images_per_sec=100.0), dict(step=4, loss=0.3, images_per_sec=300.0), dict(step=5, images_per_sec=200.0)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    result = fm.throughput(path)
    assert result["images_per_sec"] == 200.0 and result["windows"] == 3
    assert result["final_loss"] == pytest.approx((1.0 + 0.5 + 0.4 + 0.3) / 4)

    path.write_text(json.dumps(dict(step=1, images_per_sec=42.0)) + "\n")
    result = fm.throughput(path)
    assert result["images_per_sec"] == 42.0 and result["windows"] == 1 and math.isnan(result["final_loss"])

    path.write_text(json.dumps(dict(step=1, loss=1.0)) + "\n")
    with pytest.raises(ValueError, match="no images_per_sec"):
        fm.throughput(path)


def test_noise_fraction():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (6, 32, 32), dtype=np.uint8)
    flat = np.full((6, 32, 32), 128, np.uint8)
    smooth = np.broadcast_to(np.linspace(0, 255, 32).astype(np.uint8), (6, 32, 32))
    assert fm.noise_fraction(noise) == 1.0 and fm.noise_fraction(noise[..., None]) == 1.0
    assert fm.noise_fraction(flat) == 0.0 and fm.noise_fraction(smooth[..., None]) == 0.0
    assert fm.noise_fraction(np.concatenate([noise[:1], flat[:3]])[..., None]) == 0.25


def test_test_images_are_padded_uint8(fake_root):
    images, labels = fm.test_images(ExperimentConfig(data_root=str(fake_root)))
    assert images.dtype == np.uint8 and images.shape == (40, 32, 32, 1) and labels.tolist() == [i % 10 for i in
                                                                                             range(40)]
    assert not images[:, :2].any() and not images[:, :, -2:].any() and images.max() == 250


@pytest.mark.parametrize("extra, message", [
    (["--runs", "tiny,nope"], "unknown run or group 'nope'"),
    (["--runs", ","], "no runs selected"),
    (["--runs", "tiny", "--stages", "train,eval"], "unknown stage(s) ['eval']"),
    (["--runs", "tiny", "--num-samples", "25"], "--num-samples must be a multiple of 10"),
    (["--runs", "tiny", "--features", "classifier,clip"], "unknown feature network(s) ['clip']"),
    (["--runs", "tiny", "--stages", "score"], "no samples at"),
    (["--runs", "tiny", "--noise-offset", "-1", "--stages", "train"], "--noise-offset must be >= 0"),
    (["--runs", "tiny", "--sample-cfg", "0.5"], "--sample-cfg must be a number >= 1"),
    (["--runs", "tiny", "--cuda-graphs"], "--cuda-graphs replays compiled graphs: add --compile"),
])
def test_bad_input_is_one_clear_line(extra, message, tiny_registry, fake_root, tmp_path, capsys):
    assert cli(tmp_path, fake_root, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("lamamba experiment: error: ") and message in err and err.count("\n") == 1
    if "score" in extra:
        assert str(tmp_path / "runs" / "tiny-lamamba" / "samples" / "samples.npz") in err
        assert "run the sample stage first" in err


def test_select_runs(tiny_registry):
    names = lambda spec: [r.name for r in fm.select_runs(spec)]  # noqa: E731
    assert names("table4") == ["tiny-lamamba", "tiny-dit"]
    assert names(" tiny-dit , tiny , tiny-lamamba,tiny-dit ") == ["tiny-dit", "tiny-lamamba"]
    assert names("seeds,no-shift,lamamba-s") == ["lamamba-s", "lamamba-s-seed1", "dit-s2", "dit-s2-seed1", "no-shift"]
    assert names("all")[:2] == ["lamamba-s", "dit-s2"] and len(names("all")) == len(set(names("all")))
    with pytest.raises(ValueError, match="unknown run or group 'table9'"):
        fm.select_runs("table9")
    with pytest.raises(ValueError, match="no runs selected"):
        fm.select_runs(" , ")


def table_row(run: str, label: str, **values) -> dict:
    """A row as ``collect_results`` makes it, with every measured value missing unless given."""
    keys = ("train_images_per_s", "fid", "fd_classifier", "class_accuracy", "precision", "recall", "noise_fraction")
    return dict(dict.fromkeys(keys), run=run, label=label, params_m=1.234, gflops=0.5, paper={}) | values


def test_format_tables_one_table_per_group_with_two_selected_runs():
    full = table_row("lamamba-s", "A", train_images_per_s=1234.4, fid=12.345, fd_classifier=3.21, class_accuracy=0.5,
                     precision=0.25, recall=0.75, noise_fraction=0.125, paper=dict(params_m=32, gflops=3.19, fid=55.68))
    rows = [full, table_row("dit-s2", "B"), table_row("no-shift", "C")]
    text = format_tables(rows)
    assert text.count("### ") == 2 and "### Table 4" in text and "### Table 5" in text and "Table 7" not in text
    lines = text.splitlines()
    assert "| A | 1.2 | 0.50 | 1234 | 12.35 | 3.21 | 0.500 | 0.250 / 0.750 | 12.5% | 32 / 3.19 / 55.68 |" in lines
    assert format_tables([full]) == "\n"
    # the conditioning table appears with a run of its own, not for the two models table 4 already shows
    text = format_tables(rows + [table_row("wide-condition", "D")])
    assert text.count("### ") == 3 and "### Class conditioning" in text


def test_format_tables_missing_noise_fraction_is_a_plain_dash():
    text = format_tables([table_row("lamamba-s", "A"), table_row("dit-s2", "B")])
    assert "—%" not in text


def test_empty_feature_list_is_rejected(tiny_registry, fake_root, tmp_path, capsys):
    assert cli(tmp_path, fake_root, "--runs", "tiny", "--stages", "score", "--features", "") == 2
    assert "--features" in capsys.readouterr().err


def test_report_on_a_fresh_directory_says_what_is_missing(tiny_registry, fake_root, tmp_path, capsys):
    out = tmp_path / "fresh"
    assert cli(out, fake_root, "--runs", "tiny", "--stages", "report") == 2
    err = capsys.readouterr().err
    assert "no trained runs" in err and "train, sample and score stages" in err


def test_empty_stage_list_is_rejected(tiny_registry, fake_root, tmp_path, capsys):
    assert cli(tmp_path, fake_root, "--runs", "tiny", "--stages", "") == 2
    assert "--stages" in capsys.readouterr().err


def test_curve_stage_scores_kept_checkpoints_and_plots(tiny_registry, fake_root, tmp_path, monkeypatch):
    """--curve-points K: training keeps K checkpoints, the curve stage scores each once (resumable), the report
    draws curves.png against training images and GPU-seconds."""
    monkeypatch.setenv("LAMAMBA_FASHION_MNIST", str(fake_root))
    out = tmp_path / "exp"
    extra = ("--runs", "tiny-lamamba", "--train-images", "16", "--curve-points", "2", "--curve-samples", "10",
             "--stages", "train,curve,report")
    assert main(["experiment", "fashion-mnist", "--out", str(out), "--data-root", str(fake_root), *TINY_ARGS,
                 *extra]) == 0
    directory = out / "runs" / "tiny-lamamba"
    rows = [json.loads(line) for line in (directory / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and [r["images"] for r in rows] == [8, 16]
    for r in rows:
        assert r["num_samples"] == 10 and 0 <= r["noise_fraction"] <= 1 and math.isfinite(r["fd_classifier"])
        assert 0 <= r["class_accuracy"] <= 1 and 0 <= r["class_accuracy_cfg"] <= 1 and r["cfg_scale"] == 1.5
        assert r["gpu_seconds"] == r["train_seconds"] >= 0  # one process
    assert rows[0]["train_seconds"] <= rows[1]["train_seconds"]
    assert (out / "curves.png").is_file() and "curves.png" in (out / "results.md").read_text()
    assert main(["experiment", "fashion-mnist", "--out", str(out), "--data-root", str(fake_root), *TINY_ARGS,
                 *extra]) == 0  # a rerun scores nothing again
    assert len((directory / "curve.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("center", [False, True])
def test_sample_stage_passes_the_sampling_options(tmp_path, monkeypatch, center):
    """--center-noise and --sample-cfg go from the experiment's command line through its config to
    `lamamba sample`."""
    import argparse

    from lamamba import sample
    from lamamba.experiment.cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["fashion-mnist", "--out", str(tmp_path), "--device", "cpu"] + ["--center-noise"] * center
    argv += ["--sample-cfg", "1.5"] * center
    cfg = config_from_args(parser.parse_args(argv))
    assert cfg.center_noise is center
    seen = {}

    def fake_run(args):
        seen.update(vars(args))
        Path(args.out).mkdir(parents=True)
        return 0

    monkeypatch.setattr(sample, "run", fake_run)
    fm.sample_run(cfg, Run("x", "LaMamba-Diff-S", {}, "4", "x", {}))
    assert seen["center_noise"] is center and seen["clip_denoised"] is False and seen["sampler"] == cfg.sampler
    assert seen["cfg_scale"] == (1.5 if center else 1.0)
