"""
Mesh extraction: a coloured triangle mesh from an occupancy or SDF field.

``extract_mesh(field, ...)`` runs Multiresolution IsoSurface Extraction (MISE) to evaluate the
field on a fine grid only near the surface, marching cubes to turn the grid into an outward
oriented mesh, an optional Newton refinement of the vertices onto the level set, and vertex
colours from the field's rgb head; ``save_mesh`` / ``load_mesh`` write and read .ply / .obj
through ``pytorch3d.io``. See ``docs/meshing.md``.
"""

from .extract import MeshExtraction, MeshExtractionStats, extract_mesh
from .io import load_mesh, read_mesh_comments, save_mesh
from .marching import marching_cubes_grid
from .mise import MiseLevelStats, MiseResult, run_mise

__all__ = [
    "MeshExtraction",
    "MeshExtractionStats",
    "MiseLevelStats",
    "MiseResult",
    "extract_mesh",
    "load_mesh",
    "marching_cubes_grid",
    "read_mesh_comments",
    "run_mise",
    "save_mesh",
]
