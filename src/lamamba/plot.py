"""``lamamba plot RUN [RUN ...] --out FILE.png``: training curves of runs, overlaid, from their ``metrics.jsonl``.

Four panels: training loss, in-training FID (``eval_fid``, logged with ``--eval-every``), images per second and
learning rate, against training steps (``--x steps``), training images (``--x images``: steps x the global batch
size in ``run_config.json``), wall-clock seconds (``--x seconds``) or GPU-seconds (``--x gpu-seconds``: seconds x the
number of processes in ``run_config.json``). A resumed run's records are stitched: the
logger's clock restarts with each process, so seconds add up across resumes, and steps logged again after a
resume from an earlier checkpoint replace the earlier ones. Needs ``pip install "lamamba[plot]"`` (matplotlib).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from lamamba.extras import require

__all__ = ["PANELS", "X_AXES", "add_arguments", "run", "read_metrics", "series", "plot_runs"]

# metrics.jsonl key -> panel title (and whether its y axis is logarithmic)
PANELS: dict[str, tuple[str, bool]] = {"loss": ("training loss", True), "eval_fid": ("FID (in-training)", False),
                                       "images_per_sec": ("images / s", False), "lr": ("learning rate", False)}
X_AXES = {"steps": "training steps", "images": "training images", "seconds": "wall-clock seconds",
          "gpu-seconds": "GPU-seconds (wall-clock x processes)"}


def _metrics_file(run: Path) -> Path:
    path = run if run.is_file() else run / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give run directories written by `lamamba train`")
    return path


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` in step order, stitched across resumes, each with ``seconds``.

    ``seconds`` is the wall-clock time since the run started, summed over its processes (the time between a crash
    and the last record before it is not counted). Lines cut short by a crash are skipped.
    """
    records: list[dict[str, Any]] = []
    offset, last_time = 0.0, 0.0
    for line in _metrics_file(Path(run)).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        time = float(record.get("time", last_time))
        if records and (time < last_time or record["step"] < records[-1]["step"]):  # a new process (resume)
            offset += last_time  # its clock started again at 0
            while records and records[-1]["step"] >= record["step"]:  # logged again after the checkpoint
                records.pop()
        last_time = time
        records.append({**record, "seconds": offset + time})
    return records


def _batch_size(run: Path) -> int:
    config = (run.parent if run.is_file() else run) / "run_config.json"
    try:
        return int(json.loads(config.read_text())["train"]["global_batch_size"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--x images needs the global batch size from {config} ({error}); use --x steps") from error


def _world_size(run: Path) -> int:
    config = (run.parent if run.is_file() else run) / "run_config.json"
    try:
        return int(json.loads(config.read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--x gpu-seconds needs the number of processes from {config} ({error}); use --x seconds") \
            from error


def series(records: list[dict[str, Any]], key: str, x: str, scale: int = 1) -> tuple[list[float], list[float]]:
    """(x values, y values) of the records that carry a finite number under ``key``; ``scale`` is the global
    batch size for ``x="images"`` and the number of processes for ``x="gpu-seconds"``."""
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            if x in ("seconds", "gpu-seconds"):
                xs.append(r["seconds"] * (scale if x == "gpu-seconds" else 1))
            else:
                xs.append(r["step"] * (scale if x == "images" else 1))
            ys.append(float(value))
    return xs, ys


def plot_runs(runs: list[str | Path], out: str | Path, *, x: str = "steps") -> Path:
    """Draw the four panels for ``runs`` into ``out`` (any format matplotlib writes, e.g. .png, .pdf, .svg)."""
    if x not in X_AXES:
        raise ValueError(f"--x must be one of {', '.join(X_AXES)}, got {x!r}")
    require("matplotlib", "plot", "lamamba plot")
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    out = Path(out)
    scale = {"images": _batch_size, "gpu-seconds": _world_size}.get(x, lambda run: 1)
    data = [(Path(r), read_metrics(r), scale(Path(r))) for r in runs]
    figure = Figure(figsize=(11, 7.5), layout="constrained")
    if out.suffix.lstrip(".").lower() not in figure.canvas.get_supported_filetypes():
        raise ValueError(f"cannot write {out.suffix or 'files without a suffix'}: name the output FILE.png "
                         f"(or {', '.join(sorted(figure.canvas.get_supported_filetypes()))})")
    for axis, (key, (title, log_y)) in zip(figure.subplots(2, 2).flat, PANELS.items()):
        drawn: list[float] = []
        for path, records, batch in data:
            xs, ys = series(records, key, x, batch)
            if xs:
                axis.plot(xs, ys, marker="o" if len(xs) < 20 else None, label=path.name or str(path))
                drawn += ys
        axis.set_title(title)
        axis.set_xlabel(X_AXES[x])
        axis.grid(alpha=0.3)
        if not drawn:
            axis.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axis.transAxes, color="grey")
            continue
        if log_y and min(drawn) > 0:
            axis.set_yscale("log")
        axis.legend(fontsize="small")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories (their metrics.jsonl)")
    parser.add_argument("--out", required=True, metavar="FILE.png", help="image to write")
    parser.add_argument("--x", choices=tuple(X_AXES), default="steps",
                        help="x axis: training steps, training images, wall-clock seconds or GPU-seconds (seconds x "
                             "processes, from run_config.json: compare runs at equal cost) (default: steps)")


def run(args: argparse.Namespace) -> int:
    out = plot_runs(args.runs, args.out, x=args.x)
    print(f"wrote {out} ({len(args.runs)} run(s) against {X_AXES[args.x]})")
    return 0
