"""
Saving and loading extracted meshes through ``pytorch3d.io`` (iopath paths).

- ``.ply``: ``IO().save_mesh``; vertex colours of a :class:`TexturesVertex` are written as
  float ``red green blue`` vertex properties (or uchar with ``colors_as_uint8=True``) and come
  back as ``TexturesVertex`` from :func:`load_mesh`.
- ``.obj``: ``save_obj``; positions and faces only (OBJ has no standard vertex colours, so
  colours are dropped: use .ply to keep them).
"""

from __future__ import annotations

import os
from typing import Optional, Union

from .._pytorch3d import require_pytorch3d

require_pytorch3d()
from iopath.common.file_io import PathManager  # noqa: E402
from pytorch3d.io import IO, save_obj  # noqa: E402
from pytorch3d.structures import Meshes  # noqa: E402

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

    Raises:
        ValueError: if ``mesh`` does not hold exactly one mesh or the suffix is unknown.
    """
    if not isinstance(mesh, Meshes) or len(mesh) != 1:
        raise ValueError("save_mesh needs a Meshes object holding exactly one mesh.")
    suffix = _suffix(path)
    path_manager = PathManager() if path_manager is None else path_manager
    path = os.fspath(path)
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
