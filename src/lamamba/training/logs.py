"""What a run reports: ``log.txt`` (and the console), ``metrics.jsonl``, optional TensorBoard, a progress bar.

Only rank 0 writes. ``metrics.jsonl`` holds one JSON object per logged step (step, loss, mse, vb, lr, grad
norm, images/s, seconds since start, ...) and is appended to on resume, after dropping the records of steps
past the checkpoint resumed from (they are trained again, so each step appears once). TensorBoard is an optional dependency
(``pip install tensorboard``): without it a single warning says so and the rest works.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

__all__ = ["RunLogger", "get_logger"]

LOGGER_NAME = "lamamba.train"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints through ``tqdm.write`` so messages do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - a logging handler must never raise
            self.handleError(record)


class RunLogger:
    """Console + ``log.txt`` + ``metrics.jsonl`` (+ TensorBoard) for rank 0; silent elsewhere.

    Use as a context manager (or call :meth:`close`) so files and the progress bar are closed.
    """

    def __init__(self, run_dir: Path | None, *, is_main: bool, tensorboard: bool = True) -> None:
        self.is_main = is_main and run_dir is not None
        self.log = get_logger()
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        self._handlers: list[logging.Handler] = []
        self._metrics = None
        self._tb = None
        self._bar: tqdm | None = None
        self.start_time = time.time()
        if not self.is_main:
            return
        fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
        for handler in (logging.FileHandler(run_dir / "log.txt"), _TqdmHandler()):
            handler.setFormatter(fmt)
            self.log.addHandler(handler)
            self._handlers.append(handler)
        self._metrics_path = run_dir / "metrics.jsonl"
        self._metrics = open(self._metrics_path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.log.warning("TensorBoard logging is off: install it with `pip install tensorboard` "
                                 "(metrics still go to metrics.jsonl)")
            else:
                self._tb_dir = run_dir / "tensorboard"
                self._tb = SummaryWriter(str(self._tb_dir))

    # -- messages --------------------------------------------------------------------------------
    def info(self, message: str, *args: Any) -> None:
        if self.is_main:
            self.log.info(message, *args)

    def warning(self, message: str, *args: Any) -> None:
        if self.is_main:
            self.log.warning(message, *args)

    def error(self, message: str, *args: Any) -> None:
        if self.is_main:
            self.log.error(message, *args)

    # -- metrics ---------------------------------------------------------------------------------
    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Append ``{"step": step, **values, "time": seconds since start}`` to metrics.jsonl (and TensorBoard)."""
        if not self.is_main:
            return
        record = {"step": step, **values, "time": round(time.time() - self.start_time, 3)}
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
        self._metrics.write(json.dumps(clean) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"train/{key}", value, step)

    def rewind_metrics(self, step: int) -> None:
        """Drop the records after ``step`` from metrics.jsonl (atomically), before training resumes at it."""
        if not self.is_main:
            return
        from lamamba.io import atomic_write

        self._metrics.close()
        kept, dropped = [], 0
        with open(self._metrics_path, encoding="utf-8") as f:
            for line in f:
                try:
                    after = json.loads(line).get("step", 0) > step
                except (ValueError, AttributeError, TypeError):
                    after = False  # not ours: keep it
                if after:
                    dropped += 1
                else:
                    kept.append(line)
        if dropped:
            atomic_write(self._metrics_path, lambda p: p.write_text("".join(kept), encoding="utf-8"))
            self.log.info("metrics.jsonl: dropped %d record(s) after step %d (those steps are trained again)",
                          dropped, step)
        self._metrics = open(self._metrics_path, "a", encoding="utf-8")
        if self._tb is not None:  # TensorBoard hides the events after the step as well
            from torch.utils.tensorboard import SummaryWriter

            self._tb.close()
            self._tb = SummaryWriter(str(self._tb_dir), purge_step=step + 1)

    # -- progress bar ----------------------------------------------------------------------------
    def progress(self, start: int, total: int) -> None:
        if self.is_main:
            self._bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, desc="train",
                             mininterval=0.5)

    def advance(self, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for handler in self._handlers:
            self.log.removeHandler(handler)
            handler.close()
        self._handlers.clear()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
