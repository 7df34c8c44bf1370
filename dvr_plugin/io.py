"""File access through iopath (local paths and any registered URI scheme), with atomic writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from iopath.common.file_io import PathManager

path_manager = PathManager()


def open_path(path: str, mode: str = "r") -> IO:
    """Open a local path or an iopath URI."""
    return path_manager.open(str(path), mode)


def make_dirs(path: str) -> None:
    """Create a folder (and its parents) if it does not exist."""
    path_manager.mkdirs(str(path))


@contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO]:
    """
    Write to ``path`` so that readers see either the old file or the complete new one: the
    data goes to a temporary file in the same folder, which is renamed over ``path`` only after
    it was written and flushed. Non-local iopath paths are written directly.
    """
    path = str(path)
    local = path_manager.get_local_path(path) if "://" not in path else None
    if local is None:
        with open_path(path, mode) as handle:
            yield handle
        return
    folder = os.path.dirname(os.path.abspath(local))
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(local))
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual mode
        os.replace(temporary, local)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
