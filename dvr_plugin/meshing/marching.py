"""
Marching cubes on a grid of inside values, with PyTorch3D's triangle tables.

How PyTorch3D's ``marching_cubes`` is used (conventions checked by experiment on
easypytorch3d 0.7.9.post1 and pinned by ``tests/test_meshing.py``):

- ``vol_batch`` is `(N, D, H, W)` and a vertex comes back as ``(w, h, d)``: the *last* volume
  axis is the first coordinate. A grid indexed ``[i, j, k]`` along (x, y, z) and passed as is
  therefore gives vertices ``(k, j, i)``; the columns are reversed here.
- ``return_local_coords=True`` maps ``[0, W-1] x [0, H-1] x [0, D-1]`` to ``[-1, 1]^3``;
  it is not used here (``False`` gives voxel index units, converted to world units below).
- A corner counts as "in" when its value is *below* ``isolevel``. With a volume that is larger
  inside and the column reversal above (a reflection), PyTorch3D's triangles wind so that
  :class:`~pytorch3d.structures.Meshes` normals point *out of* the object (checked on spheres
  for occupancy and SDF fields).

Two defects of the CPU kernel of that release make it unsafe on raw field values: it drops
triangles after the first degenerate one in a cell (a degenerate triangle appears whenever a
value lies within 1e-5 of the isolevel, e.g. signed distances near the surface), and it hashes
vertex ids in float32, which merges distinct vertices beyond 2^24 grid points (above 256^3).
Both leave holes. So marching cubes here only decides the *topology*:

1. the kernel runs on a volume of signs (+1 inside, -1 outside) in blocks of at most
   ``block_size`` cells per axis, skipping blocks without a sign change. With +-1 values every
   vertex sits at an edge midpoint: never degenerate, exact in float32, and it names its edge;
2. vertices are welded across blocks by a global edge key;
3. each vertex is placed on its edge by linear interpolation of the true inside values
   (in float64): ``t = v_a / (v_a - v_b)`` from corner ``a`` to corner ``b``.

The output is the classic marching cubes mesh of the values (Lorensen-Cline tables, linear
vertex placement), watertight wherever the surface does not leave the grid.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from pytorch3d.ops.marching_cubes import marching_cubes as _p3d_marching_cubes

# Triangle winding produced for an "inside is larger" volume after reversing the vertex
# columns; True means the faces must be flipped to make normals point outward.
_FLIP_WINDING = False


def _sign_volume_triangles(inside: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    PyTorch3D marching cubes on one block of signs.

    Args:
        inside: `(a, b, c)` boolean block indexed along (x, y, z).

    Returns:
        `(V, 3)` int64 vertex positions in doubled local grid units (along x, y, z) and
        `(F, 3)` int64 faces indexing them.
    """
    volume = inside.to(torch.float32) * 2.0 - 1.0
    verts, faces = _p3d_marching_cubes(volume[None], 0.0, return_local_coords=False)
    verts, faces = verts[0], faces[0]
    if not isinstance(verts, torch.Tensor) or verts.numel() == 0:
        empty = torch.zeros((0, 3), dtype=torch.int64, device=inside.device)
        return empty, empty
    doubled = torch.round(verts.flip(-1) * 2.0).to(torch.int64)
    return doubled, faces.to(torch.int64)


def marching_cubes_grid(
    values: torch.Tensor,
    *,
    origin: Sequence[float],
    spacing: Sequence[float],
    block_size: int = 128,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    The iso-surface at zero of a grid of inside values (positive inside).

    Args:
        values: `(n + 1, n + 1, n + 1)` float inside values indexed ``[i, j, k]`` along
            (x, y, z); grid point ``(i, j, k)`` is at ``origin + (i, j, k) * spacing``.
            Values are only read at the two ends of edges that change sign.
        origin: `(3,)` world position of grid point ``(0, 0, 0)``.
        spacing: `(3,)` world size of a cell.
        block_size: the most cells per axis passed to one marching cubes call.

    Returns:
        verts: `(V, 3)` float32 world vertices (on ``values``' device).
        faces: `(F, 3)` int64 faces, wound so that normals point out of the inside region.
    """
    if values.dim() != 3 or len(set(values.shape)) != 1 or values.shape[0] < 2:
        raise ValueError(
            f"values must be a cubic grid (n + 1, n + 1, n + 1) with n >= 1, got "
            f"{tuple(values.shape)}."
        )
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}.")
    device = values.device
    side = values.shape[0]
    n_cells = side - 1
    doubled_side = 2 * n_cells + 1

    keys, faces, n_verts = [], [], 0
    for i0 in range(0, n_cells, block_size):
        for j0 in range(0, n_cells, block_size):
            for k0 in range(0, n_cells, block_size):
                block = (
                    values[
                        i0 : i0 + block_size + 1,
                        j0 : j0 + block_size + 1,
                        k0 : k0 + block_size + 1,
                    ]
                    > 0
                )
                if bool(block.all()) or not bool(block.any()):
                    continue
                doubled, block_faces = _sign_volume_triangles(block)
                if block_faces.numel() == 0:
                    continue
                doubled = doubled + 2 * torch.tensor([i0, j0, k0], device=device)
                keys.append(
                    (doubled[:, 0] * doubled_side + doubled[:, 1]) * doubled_side + doubled[:, 2]
                )
                faces.append(block_faces + n_verts)
                n_verts += doubled.shape[0]
    if not faces:
        return (
            torch.zeros((0, 3), dtype=torch.float32, device=device),
            torch.zeros((0, 3), dtype=torch.int64, device=device),
        )

    unique_keys, inverse = torch.unique(torch.cat(keys), return_inverse=True)
    faces_all = inverse[torch.cat(faces)]
    if _FLIP_WINDING:
        faces_all = faces_all.flip(-1)

    # Decode the edge of every vertex: exactly one doubled coordinate is odd.
    doubled = torch.stack(
        [
            torch.div(unique_keys, doubled_side * doubled_side, rounding_mode="floor"),
            torch.div(unique_keys, doubled_side, rounding_mode="floor") % doubled_side,
            unique_keys % doubled_side,
        ],
        dim=-1,
    )
    odd = doubled % 2
    if not bool((odd.sum(-1) == 1).all()):  # pragma: no cover - a kernel contract check
        raise RuntimeError("marching cubes returned a vertex that is not on an edge midpoint.")
    corner_a = torch.div(doubled - odd, 2, rounding_mode="floor")
    corner_b = corner_a + odd
    flat = values.reshape(-1)

    def at(corner: torch.Tensor) -> torch.Tensor:
        return flat[(corner[:, 0] * side + corner[:, 1]) * side + corner[:, 2]].to(torch.float64)

    value_a, value_b = at(corner_a), at(corner_b)
    t = (value_a / (value_a - value_b)).clamp(0.0, 1.0)
    position = corner_a.to(torch.float64) + t[:, None] * odd.to(torch.float64)
    origin_t = torch.tensor(list(origin), dtype=torch.float64, device=device)
    spacing_t = torch.tensor(list(spacing), dtype=torch.float64, device=device)
    verts = (origin_t + position * spacing_t).to(torch.float32)
    return verts, faces_all
