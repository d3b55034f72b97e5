"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM (a scheduler's notice before it kills the job), with a checkpoint.

``StopSignals`` is a context manager around the training loop. The first SIGINT/SIGTERM only records the
signal: the loop finishes the step in progress, saves a checkpoint of it and raises :class:`Interrupted`,
which the command line reports as one line with exit code 128 + signal (130 / 143). A second signal changes
nothing (the checkpoint is on its way); a third gives up at once, without saving. After the context the
previous handlers apply again (Python's KeyboardInterrupt for Ctrl-C), unless the run was stopped: then
further SIGINT/SIGTERM are ignored while the process exits (SIGKILL still ends it).
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["Interrupted", "StopSignals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run stopped on a signal; ``exit_code`` is 128 + the signal number, ``str()`` the one-line report."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """Record SIGINT/SIGTERM in ``self.signum`` while active (main thread only; elsewhere a no-op)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
        elif self.count >= 3:
            raise Interrupted(signum, f"interrupted by {signal_name(signum)} three times: stopped without "
                                      "saving (the newest checkpoint is intact)")

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            # after a stop the process is on its way out with 130/143: a late signal must not turn that
            # into a KeyboardInterrupt traceback, so SIGINT/SIGTERM stay ignored from here on
            signal.signal(s, handler if self.signum is None else signal.SIG_IGN)
        self._previous.clear()
