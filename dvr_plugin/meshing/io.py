"""
Saving and loading extracted meshes through ``pytorch3d.io`` (iopath paths).

- ``.ply``: ``IO().save_mesh``; vertex colours of a :class:`TexturesVertex` are written as
  float ``red green blue`` vertex properties (or uchar with ``colors_as_uint8=True``) and come
  back as ``TexturesVertex`` from :func:`load_mesh`.
- ``.obj``: ``save_obj``; positions and faces only (OBJ has no standard vertex colours, so
  colours are dropped: use .ply to keep them).

Header comments (``comments=...``; PLY ``comment`` lines after the ``format`` line, OBJ ``#``
lines at the top) state what the numbers mean, e.g. the frame and units of
:meth:`dvr_plugin.data.frame.WorldFrame.file_comments`; both readers skip them, and
:func:`read_mesh_comments` returns them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Optional, Union

from iopath.common.file_io import PathManager
from pytorch3d.io import IO, save_obj
from pytorch3d.structures import Meshes

PathOrStr = Union[str, os.PathLike]
MESH_SUFFIXES = (".ply", ".obj")


def _suffix(path: PathOrStr) -> str:
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(f"Mesh files must end in one of {MESH_SUFFIXES}, got {os.fspath(path)!r}.")
    return suffix


def save_mesh(
    mesh: Meshes,
    path: PathOrStr,
    *,
    path_manager: Optional[PathManager] = None,
    binary: bool = True,
    colors_as_uint8: bool = False,
    decimal_places: Optional[int] = None,
    comments: Sequence[str] = (),
) -> None:
    """
    Save one mesh as .ply (with vertex colours) or .obj (geometry only).

    Args:
        mesh: a :class:`~pytorch3d.structures.Meshes` holding exactly one mesh (for example
            ``extract_mesh(...).mesh``); an empty mesh is written with no vertices.
        path: destination ending in ``.ply`` or ``.obj``; any path the ``path_manager``
            understands.
        path_manager: an iopath ``PathManager`` (default: local files).
        binary: .ply only: binary (default) or ASCII.
        colors_as_uint8: .ply only: colours as 0..255 bytes instead of floats.
        decimal_places: ASCII precision (ASCII .ply and .obj).
        comments: header lines (ASCII, one line each), e.g. the frame and units of the
            vertices; PLY ``comment`` lines or OBJ ``#`` lines.

    Raises:
        ValueError: if ``mesh`` does not hold exactly one mesh, the suffix is unknown or a
            comment is not one line of ASCII.
    """
    if not isinstance(mesh, Meshes) or len(mesh) != 1:
        raise ValueError("save_mesh needs a Meshes object holding exactly one mesh.")
    suffix = _suffix(path)
    path_manager = PathManager() if path_manager is None else path_manager
    path = os.fspath(path)
    lines = _check_comments(comments)
    if lines:
        with tempfile.TemporaryDirectory() as folder:
            plain = os.path.join(folder, f"mesh{suffix}")
            _write(mesh, plain, suffix, PathManager(), binary, colors_as_uint8, decimal_places)
            data = b""
            if os.path.exists(plain):  # save_obj writes nothing for an empty mesh
                with open(plain, "rb") as handle:
                    data = handle.read()
        with path_manager.open(path, "wb") as handle:
            handle.write(_with_comments(data, suffix, lines))
        return
    _write(mesh, path, suffix, path_manager, binary, colors_as_uint8, decimal_places)


def _write(
    mesh: Meshes,
    path: str,
    suffix: str,
    path_manager: PathManager,
    binary: bool,
    colors_as_uint8: bool,
    decimal_places: Optional[int],
) -> None:
    if suffix == ".ply":
        IO(path_manager=path_manager).save_mesh(
            mesh,
            path,
            binary=binary,
            colors_as_uint8=colors_as_uint8,
            decimal_places=decimal_places,
        )
    else:
        save_obj(
            path,
            mesh.verts_list()[0],
            mesh.faces_list()[0],
            decimal_places=decimal_places,
            path_manager=path_manager,
        )


def _check_comments(comments: Sequence[str]) -> list[str]:
    if isinstance(comments, str):
        comments = [comments]
    lines = []
    for comment in comments:
        text = str(comment)
        if "\n" in text or "\r" in text or not text.isascii():
            raise ValueError(f"A mesh file comment must be one line of ASCII, got {text!r}.")
        lines.append(text)
    return lines


def _with_comments(data: bytes, suffix: str, lines: list[str]) -> bytes:
    """``data`` (a whole .ply / .obj file) with ``lines`` added to its header."""
    if suffix == ".obj":
        return b"".join(f"# {line}\n".encode("ascii") for line in lines) + data
    start = data.find(b"\nformat ")
    if not data.startswith(b"ply\n") or start < 0:
        raise ValueError("Unexpected PLY header from pytorch3d.io: cannot add comments.")
    end = data.index(b"\n", start + 1) + 1
    header = b"".join(f"comment {line}\n".encode("ascii") for line in lines)
    return data[:end] + header + data[end:]


def read_mesh_comments(
    path: PathOrStr, *, path_manager: Optional[PathManager] = None
) -> list[str]:
    """
    The header comments of a .ply (``comment`` lines) or .obj file (``#`` lines before the
    first other line), without the markers, in file order.
    """
    suffix = _suffix(path)
    path_manager = PathManager() if path_manager is None else path_manager
    comments: list[str] = []
    with path_manager.open(os.fspath(path), "rb") as handle:
        if suffix == ".ply":
            if handle.readline().strip() != b"ply":
                raise ValueError(f"{os.fspath(path)} is not a PLY file.")
            for raw in handle:
                line = raw.decode("ascii", errors="replace").strip()
                if line == "end_header":
                    break
                if line.startswith("comment"):
                    comments.append(line[len("comment"):].strip())
        else:
            for raw in handle:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("#"):
                    if line:
                        break
                    continue
                comments.append(line[1:].strip())
    return comments


def load_mesh(
    path: PathOrStr,
    *,
    path_manager: Optional[PathManager] = None,
    device: str = "cpu",
) -> Meshes:
    """
    Load a .ply or .obj mesh (the counterpart of :func:`save_mesh`).

    Args:
        path: a ``.ply`` or ``.obj`` path.
        path_manager: an iopath ``PathManager`` (default: local files).
        device: where the mesh is put.

    Returns:
        Meshes with one mesh; ``TexturesVertex`` when a .ply file has vertex colours.
    """
    _suffix(path)
    path_manager = PathManager() if path_manager is None else path_manager
    return IO(path_manager=path_manager).load_mesh(
        os.fspath(path), include_textures=True, device=device
    )
