"""Optional dependencies: imported only where used, with one clear line naming the extra to install."""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed. A ``ValueError`` too, so the CLI prints it as one line."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or raise :class:`MissingExtraError` saying ``pip install "lamamba[extra]"``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(f'{purpose} needs {module.split(".")[0]}: pip install "lamamba[{extra}]"') from error
