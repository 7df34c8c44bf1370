"""
Checkpoints: written atomically through iopath paths, read back with clear errors.

A checkpoint is one ``torch.save`` dict::

    {"format": "dvr_plugin.checkpoint", "version": 1, "step": int, "config": dict,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict,
     "rng": {"torch": ..., "cuda": [...], "numpy": ..., "python": ..., "generators": {...}}}

:func:`save_checkpoint` writes it through :func:`dvr_plugin.io.atomic_write` (a temporary file
in the same folder, renamed over the target only once complete), so a crash or a failing write
leaves the previous checkpoint intact. :func:`load_checkpoint` raises ``ValueError`` naming the
file when it is truncated, corrupt or not a checkpoint of this package.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import torch

from ..io import atomic_write, open_path, path_manager

CHECKPOINT_FORMAT = "dvr_plugin.checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "step", "config", "model")


def save_checkpoint(path: str, state: Mapping[str, Any]) -> None:
    """
    Write a checkpoint dict atomically.

    Args:
        path: a local path or iopath URI.
        state: the checkpoint dict (``format`` and ``version`` are added when missing).
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    with atomic_write(str(path), "wb") as handle:
        torch.save(payload, handle)


def checkpoint_exists(path: str) -> bool:
    """Whether a file exists at ``path`` (iopath aware)."""
    return bool(path_manager.exists(str(path)))


def load_checkpoint(path: str, *, map_location: Any = "cpu") -> dict[str, Any]:
    """
    Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: a local path or iopath URI.
        map_location: passed to ``torch.load``.

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: when there is no file.
        ValueError: when the file is truncated, corrupt or not a checkpoint of this package.
    """
    path = str(path)
    if not checkpoint_exists(path):
        raise FileNotFoundError(f"No checkpoint at {path}.")
    try:
        with open_path(path, "rb") as handle:
            state = torch.load(handle, map_location=map_location, weights_only=False)
    except Exception as error:  # any unpickling failure means a bad file
        raise ValueError(
            f"Cannot read the checkpoint {path}: it is truncated or corrupt ({error}). The file "
            "was left as it is."
        ) from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a dvr_plugin checkpoint.")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"The checkpoint {path} lacks {missing}.")
    if int(state["version"]) > CHECKPOINT_VERSION:
        raise ValueError(
            f"The checkpoint {path} has version {state['version']}; this package reads up to "
            f"{CHECKPOINT_VERSION}."
        )
    return state


def capture_rng_state(generators: Optional[Mapping[str, torch.Generator]] = None) -> dict:
    """
    Every random number generator state a training run depends on.

    Args:
        generators: named ``torch.Generator`` objects of the run.

    Returns:
        ``{"torch", "cuda", "numpy", "python", "generators"}`` states.
    """
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "generators": {name: gen.get_state() for name, gen in (generators or {}).items()},
    }


def restore_rng_state(
    state: Mapping[str, Any], generators: Optional[Mapping[str, torch.Generator]] = None
) -> None:
    """
    Put back what :func:`capture_rng_state` captured.

    Args:
        state: the captured states.
        generators: the run's generators, by the same names; each must have been captured.
    """
    torch.set_rng_state(_cpu_byte_tensor(state["torch"]))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([_cpu_byte_tensor(s) for s in cuda_states])
        else:
            torch.cuda.set_rng_state(_cpu_byte_tensor(cuda_states[0]))
    np.random.set_state(state["numpy"])
    random.setstate(_python_state(state["python"]))
    saved = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise ValueError(f"The checkpoint holds no state for the generator {name!r}.")
        gen.set_state(_cpu_byte_tensor(saved[name]))


def _cpu_byte_tensor(value: Any) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.uint8).cpu()


def _python_state(value: Any) -> tuple:
    """``random.setstate`` needs tuples; a round trip through some loaders yields lists."""
    version, internal, gauss = value
    return (version, tuple(internal), gauss)
