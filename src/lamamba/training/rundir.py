"""The run directory of a training run: which one, what to resume from, and an exclusive lock on it.

* ``--run-dir DIR`` uses ``DIR`` and resumes its newest checkpoint. Without it, the same command resumes the
  newest numbered run under ``--results-dir`` that has the same configuration and stopped before
  ``max_steps`` (an interrupted or killed run); otherwise a new numbered directory ``NNN-<model>`` is made.
* One process at a time: rank 0 holds an ``fcntl`` lock on ``DIR/.lock`` for the whole run. The kernel
  releases it when the process ends, however it ends, so a killed run never leaves a stale lock; a second
  start on the same directory is refused with the holder's process id and host.
* A start that fails before training begins removes the directory it created (no empty numbered folders).
* Resuming from checkpoint S into a directory that holds checkpoints newer than S is refused: the newer ones
  belong to a different history, and the run would mix the two (see ``--resume``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from lamamba.distributed import DistEnv, broadcast_object
from lamamba.pretrained import TRAINING_STATE_FILE, list_checkpoints
from lamamba.training.checkpoint import STATE_JSON, clean_unfinished, find_resume_checkpoint
from lamamba.training.config import TrainConfig

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunDirectory", "RunDirInUse", "open_run_directory", "LOCK_FILE"]

LOCK_FILE = ".lock"
_NUMBERED = re.compile(r"^(\d{3,})-")
# options that do not change what a run computes: a re-run may differ in them and still resume
_NOT_RESULT_OPTIONS = ("run_dir", "resume", "results_dir", "threads", "num_workers", "tensorboard")


class RunDirInUse(ValueError):
    """Another live process holds the run directory's lock."""


class _Lock:
    """An exclusive ``flock`` on ``path``, released when closed or when the process ends."""

    def __init__(self, path: Path) -> None:
        self.fd: int | None = None
        if fcntl is None:
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirInUse(f"{path.parent} is in use by {holder}; wait for it to end or stop it, or choose "
                              "another --run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, (f"process {os.getpid()} on {socket.gethostname()} (started "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:200]})\n").encode())
        self.fd = fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def _try_lock(path: Path) -> _Lock | None:
    try:
        return _Lock(path)
    except RunDirInUse:
        return None


class RunDirectory:
    """A locked run directory and the checkpoint to resume from (``resume`` is None for a fresh start)."""

    def __init__(self, path: Path, resume: Path | None, created: bool, lock: _Lock | None) -> None:
        self.path, self.resume, self.created, self._lock = path, resume, created, lock
        self.started = False  # set once training begins: a later failure keeps the directory

    def close(self) -> None:
        """Release the lock; remove the directory if this process made it and training never began."""
        if self._lock is not None:
            if self.created and not self.started and not list_checkpoints(self.path / "checkpoints"):
                shutil.rmtree(self.path, ignore_errors=True)
            self._lock.close()
            self._lock = None


def _same_run(run_dir: Path, config: TrainConfig) -> bool:
    try:
        saved = json.loads((run_dir / "run_config.json").read_text())["train"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    mine = config.to_dict()
    return all(saved.get(k) == v for k, v in mine.items() if k not in _NOT_RESULT_OPTIONS)


def _numbered(results: Path) -> list[tuple[int, Path]]:
    if not results.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in results.iterdir() if p.is_dir() and (m := _NUMBERED.match(p.name))]
    return sorted(found)


def _unfinished_same_run(config: TrainConfig) -> tuple[Path, _Lock] | None:
    """The newest numbered run with this configuration that stopped early and is not running now."""
    for _, run_dir in reversed(_numbered(Path(config.results_dir))):
        found = list_checkpoints(run_dir / "checkpoints")
        if found and found[-1][0] < config.max_steps and _same_run(run_dir, config):
            lock = _try_lock(run_dir / LOCK_FILE)
            if lock is not None:
                return run_dir, lock
    return None


def _new_numbered(config: TrainConfig) -> tuple[Path, _Lock]:
    results = Path(config.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", config.model)
    while True:  # two starts at once: the second mkdir fails and takes the next number
        number = max((n for n, _ in _numbered(results)), default=-1) + 1
        run_dir = results / f"{number:03d}-{name}"
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir, _Lock(run_dir / LOCK_FILE)


def _check_history(run_dir: Path, resume: Path | None) -> None:
    """Refuse to continue from step S in a directory that already holds checkpoints after S."""
    if resume is None:
        return
    step = int(resume.name) if resume.name.isdigit() else -1
    newer = [s for s, _ in list_checkpoints(run_dir / "checkpoints") if s > step]
    if newer:
        raise ValueError(f"{run_dir} holds checkpoints newer than step {step} ({', '.join(map(str, newer))}), from "
                         f"a different history; continue in another directory (--run-dir NEW --resume {resume}) "
                         "or delete them first")


def open_run_directory(config: TrainConfig, env: DistEnv) -> RunDirectory:
    """Decide, create and lock (rank 0) the run directory; every rank gets the same path and resume point."""
    chosen: Any = None
    failure: BaseException | None = None
    if env.is_main:
        try:
            chosen = _open_on_main(config)
        except (ValueError, OSError) as error:  # tell the other ranks instead of leaving them waiting
            failure = error
    shared = broadcast_object(str(failure) if failure is not None else
                              None if chosen is None else
                              (str(chosen.path), chosen.resume and str(chosen.resume), chosen.created))
    if failure is not None:
        raise failure
    if isinstance(shared, str):
        raise ValueError(f"rank 0 could not open the run directory: {shared}")
    if not env.is_main:
        path, resume, created = shared
        return RunDirectory(Path(path), resume and Path(resume), created, None)
    return chosen


def _open_on_main(config: TrainConfig) -> RunDirectory:
    resume: Path | None = None
    explicit = config.resume not in ("auto", "never")
    if explicit:
        resume = find_resume_checkpoint(config.resume)
    if config.run_dir or explicit:
        run_dir = Path(config.run_dir) if config.run_dir else resume.parent.parent
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = _Lock(run_dir / LOCK_FILE)
    else:
        found = _unfinished_same_run(config) if config.resume == "auto" else None
        (run_dir, lock), created = (found, False) if found else (_new_numbered(config), True)
    directory = RunDirectory(run_dir, resume, created, lock)
    try:
        if not explicit:
            found_ckpts = list_checkpoints(run_dir / "checkpoints")
            if found_ckpts and config.resume == "never":
                raise ValueError(f"{run_dir} already holds checkpoints; resume it (--resume auto) or choose "
                                 "another --run-dir")
            if found_ckpts:  # the newest with a complete training state (an inference-only one is skipped)
                complete = [p for _, p in found_ckpts if (p / TRAINING_STATE_FILE).is_file()
                            and (p / STATE_JSON).is_file()]
                directory.resume = find_resume_checkpoint(complete[-1] if complete else found_ckpts[-1][1])
        _check_history(run_dir, directory.resume)
        (run_dir / "samples").mkdir(exist_ok=True)
        clean_unfinished(run_dir / "checkpoints")  # only under the lock: another run's saves are not ours
    except BaseException:
        directory.close()
        raise
    return directory
