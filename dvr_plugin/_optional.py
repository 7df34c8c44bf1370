"""Optional dependencies: whether a module can be imported, asked only when a caller needs it."""

from __future__ import annotations

import importlib


def importable(module: str) -> bool:
    """
    Whether ``import <module>`` succeeds (tried on every call, never at our own import time).

    Any failure counts as "not available": a missing package, or a broken one (e.g. an extension
    built for another torch).
    """
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True
