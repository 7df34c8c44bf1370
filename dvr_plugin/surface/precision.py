"""
The precisions the root finder may run its field evaluations in, and the context that turns one on.

The march and the secant steps evaluate the field many times but only decide *where* the surface
lies; on CUDA they may run their matrix products in TF32 or bfloat16, and the result is finished
in full precision (see :mod:`dvr_plugin.surface.root_finding`). Off CUDA every precision is float32.
Nothing here has a frame or units: it only sets how matrix products are computed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

MARCH_PRECISIONS = ("auto", "float32", "tf32", "bfloat16")
REFINE_PRECISIONS = ("float32", "tf32", "bfloat16")


def check_precision(
    precision: str, *, name: str = "precision", choices: tuple[str, ...] = MARCH_PRECISIONS
) -> str:
    """
    ``precision`` if it is one of ``choices``; otherwise a ``ValueError`` naming ``name``.

    Args:
        precision: the requested precision.
        name: the argument's name in the error message.
        choices: the accepted values (:data:`MARCH_PRECISIONS` or :data:`REFINE_PRECISIONS`).
    """
    if precision not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {precision!r}.")
    return precision


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """
    The precision actually used on ``device``: ``"auto"`` is ``"tf32"`` on CUDA and
    ``"float32"`` elsewhere; reduced precisions are ``"float32"`` off CUDA.
    """
    check_precision(precision)
    if torch.device(device).type != "cuda":
        return "float32"
    return "tf32" if precision == "auto" else precision


@contextmanager
def reduced_precision(precision: str, device: torch.device | str) -> Iterator[None]:
    """TF32 matmuls or bfloat16 autocast on CUDA for the code inside; a no-op elsewhere."""
    precision = resolve_precision(precision, device)
    if precision == "float32":
        yield
        return
    if precision == "bfloat16":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
