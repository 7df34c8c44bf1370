"""Where the shared test and example data live (read in place, never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

DATA_DIR_ENV = "DVR_DATA_DIR"


def repo_root() -> Path:
    """The folder holding the ``dvr_plugin`` package (the repository root in a checkout)."""
    return Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """
    The shared data folder: ``$DVR_DATA_DIR`` when set, else ``<repo>/../shared/data``.

    The folder may not exist; use :func:`find_shared_data` to test for a data set.
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return repo_root().parent / "shared" / "data"


def find_shared_data(*parts: str) -> Optional[Path]:
    """``shared_data_dir() / parts`` when it exists, else ``None``."""
    path = shared_data_dir().joinpath(*parts)
    return path if path.exists() else None


def missing_data_message(*parts: str) -> str:
    """A skip message naming the missing data set and how to point at it."""
    path = shared_data_dir().joinpath(*parts)
    return (
        f"shared data {'/'.join(parts)} not found at {path}; set {DATA_DIR_ENV} to the folder "
        "holding the shared data sets (see docs/data.md)."
    )
