"""Small file-system helpers shared by the modules that write results users must not lose."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it to ``path``.

    A crash leaves either the previous file or the complete new one, never a partial file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
