"""
A single place that imports PyTorch3D and says how to install it when that fails.

``dvr_plugin/__init__.py`` calls :func:`require_pytorch3d` before anything else, so every
submodule can import PyTorch3D at its top (Python runs the package's ``__init__`` first).
"""

from __future__ import annotations

INSTALL_HINT = (
    "dvr_plugin needs PyTorch3D. Install it with `pip install dvr-plugin` (which pulls "
    "`easypytorch3d==0.7.9.post1`, whose compiled part matches torch==2.11.0 only), or run "
    "`make test` / `make demo`, which create a pinned environment in .venv."
)


def require_pytorch3d():
    """Import and return the ``pytorch3d`` module, or raise ``ImportError`` with install help."""
    try:
        import pytorch3d
        import pytorch3d.renderer
    except ImportError as error:  # pragma: no cover - exercised only without PyTorch3D
        raise ImportError(f"{INSTALL_HINT} (import failed: {error})") from error
    return pytorch3d
