"""``lamamba plot``: curves of several runs from metrics.jsonl against steps, images or seconds; resumed runs."""
import json

import pytest
from PIL import Image

from lamamba import cli
from lamamba.plot import read_metrics, series

pytest.importorskip("matplotlib")


def write_run(path, records, batch=8, world_size=1):
    path.mkdir(parents=True)
    (path / "run_config.json").write_text(json.dumps({"train": {"global_batch_size": batch},
                                                      "world_size": world_size}))
    with open(path / "metrics.jsonl", "w") as f:
        for r in records:
            f.write((json.dumps(r) if isinstance(r, dict) else r) + "\n")
    return path


@pytest.fixture
def runs(tmp_path):
    a = write_run(tmp_path / "run-a", [
        {"step": 10, "loss": 0.9, "lr": 1e-3, "images_per_sec": 100.0, "time": 5.0},
        {"step": 20, "loss": 0.5, "lr": 1e-3, "images_per_sec": 110.0, "time": 10.0},
        {"step": 20, "eval_fid": 80.0, "eval_num_samples": 100, "time": 12.0},
        '{"step": 30, "loss": 0.4',                                   # cut short by a crash
        {"step": 30, "loss": 0.45, "lr": 1e-3, "images_per_sec": 90.0, "time": 4.0},   # resumed: clock restarts
        {"step": 40, "loss": 0.3, "lr": 1e-3, "images_per_sec": "nan", "time": 9.0},
    ])
    b = write_run(tmp_path / "run-b", [{"step": s, "loss": 1 / s, "lr": 5e-4, "images_per_sec": 50.0, "time": s}
                                       for s in range(5, 50, 5)], batch=16, world_size=4)
    return a, b


def test_resumed_runs_are_stitched(runs, tmp_path):
    records = read_metrics(runs[0])
    assert [r["step"] for r in records] == [10, 20, 20, 30, 40]
    assert [r["seconds"] for r in records] == [5.0, 10.0, 12.0, 16.0, 21.0]
    assert series(records, "loss", "images", 8) == ([80, 160, 240, 320], [0.9, 0.5, 0.45, 0.3])
    assert series(records, "images_per_sec", "seconds") == ([5.0, 10.0, 16.0], [100.0, 110.0, 90.0])
    assert series(records, "images_per_sec", "gpu-seconds", 4) == ([20.0, 40.0, 64.0], [100.0, 110.0, 90.0])
    again = write_run(tmp_path / "again", [{"step": 10, "loss": 1.0, "time": 1}, {"step": 20, "loss": 0.8, "time": 2},
                                           {"step": 20, "loss": 0.7, "time": 1}])  # resumed from step 10
    assert series(read_metrics(again), "loss", "steps") == ([10, 20], [1.0, 0.7])


@pytest.mark.parametrize("x", ["steps", "images", "seconds", "gpu-seconds"])
def test_plot_writes_a_png_of_several_runs(runs, tmp_path, x):
    out = tmp_path / "plots" / f"curves-{x}.png"
    assert cli.main(["plot", *map(str, runs), "--out", str(out), "--x", x]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 500


def test_bad_input_is_one_line(runs, tmp_path, capsys):
    assert cli.main(["plot", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err
    (runs[1] / "run_config.json").unlink()
    assert cli.main(["plot", *map(str, runs), "--out", str(tmp_path / "x.png"), "--x", "images"]) == 2
    assert "use --x steps" in capsys.readouterr().err
    assert cli.main(["plot", str(runs[0]), "--out", str(tmp_path / "x.nope")]) == 2
    assert "FILE.png" in capsys.readouterr().err


def test_missing_matplotlib_names_the_extra(runs, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert cli.main(["plot", str(runs[0]), "--out", str(tmp_path / "x.png")]) == 2
    assert 'pip install "lamamba[plot]"' in capsys.readouterr().err
