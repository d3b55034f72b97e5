"""Small file-system helpers shared by the modules that write results users must not lose."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "share_like_umask"]

_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:  # read once: os.umask can only be read by setting it
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def share_like_umask(path: str | os.PathLike) -> None:
    """Give a written file the permissions of an ordinary new file (0666 minus the umask).

    safetensors creates its files with mode 0600, which a team sharing results on a cluster cannot read;
    results follow the user's umask instead (``umask 077`` keeps them private).
    """
    os.chmod(path, 0o666 & ~_umask())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it to ``path``.

    A crash leaves either the previous file or the complete new one, never a partial file. The file gets
    the umask's permissions (:func:`share_like_umask`).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        share_like_umask(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
