"""Tests of dvr_plugin.meshing: MISE, marching cubes conventions, refinement, colours, IO."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import pytest
import torch
from pytorch3d.loss.point_mesh_distance import point_face_distance
from pytorch3d.ops import sample_points_from_meshes
from pytorch3d.ops.marching_cubes import marching_cubes
from pytorch3d.renderer import TexturesVertex
from pytorch3d.structures import Meshes

from dvr_plugin.fields.field import OccupancyTextureField
from dvr_plugin.fields.shapes import BoxField, SphereField, demo_scene
from dvr_plugin.meshing import extract_mesh, load_mesh, marching_cubes_grid, save_mesh
from dvr_plugin.meshing.mise import (
    cell_corners,
    dilate_cells,
    straddling_cells,
    subdivide_cells,
    upsample_values,
)

CENTRE = (0.05, -0.02, 0.01)
RADIUS = 0.3


class ConstantField(torch.nn.Module):
    """A field with one value everywhere (for empty / full grids)."""

    def __init__(self, *, value: float, field_type: str = "occupancy") -> None:
        super().__init__()
        self.value = value
        self.field_type = field_type

    def forward(self, points: torch.Tensor, latent: Optional[torch.Tensor] = None):
        return torch.full(points.shape[:-1], self.value)


class LatentSphere(torch.nn.Module):
    """A sphere at the origin whose radius is the latent code's first entry."""

    field_type = "occupancy"

    def forward(self, points: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return 20.0 * (latent[:, None, 0] - points.norm(dim=-1))


class CountingField(torch.nn.Module):
    """Wraps a field and records the number of points of every call."""

    def __init__(self, field: torch.nn.Module) -> None:
        super().__init__()
        self.inner = field
        self.field_type = field.field_type
        self.call_sizes = []

    def forward(self, points: torch.Tensor, latent: Optional[torch.Tensor] = None):
        self.call_sizes.append(points.shape[0] * points.shape[1])
        return self.inner(points)


def boundary_edge_count(faces: torch.Tensor) -> int:
    """The number of undirected edges not shared by exactly two faces."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    _, counts = torch.unique(edges, dim=0, return_counts=True)
    return int((counts != 2).sum())


def canonical_faces(faces: torch.Tensor) -> torch.Tensor:
    """Faces rotated to start at their smallest index (winding kept), rows sorted."""
    first = faces.argmin(dim=1, keepdim=True)
    order = (first + torch.arange(3)) % 3
    rotated = torch.gather(faces, 1, order)
    keys = (rotated[:, 0] * (faces.max() + 1) + rotated[:, 1]) * (faces.max() + 1) + rotated[:, 2]
    return rotated[keys.argsort()]


def signed_volume(mesh: Meshes) -> float:
    """Enclosed volume by the divergence theorem (positive for outward faces)."""
    tris = mesh.verts_packed()[mesh.faces_packed()].double()
    return float(torch.linalg.det(tris).sum() / 6.0)


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Every test starts from the same global random state."""
    torch.manual_seed(42)


def sphere_field(*, field_type: str = "occupancy") -> SphereField:
    """The reference sphere (centre CENTRE, radius RADIUS) with a smooth colour."""
    return SphereField(centre=CENTRE, radius=RADIUS, field_type=field_type)


def sphere_chamfer_l1(mesh: Meshes, *, n_points: int = 400) -> Tuple[float, float]:
    """
    Accuracy (mesh -> sphere, exact) and completeness (sphere -> mesh, exact point to
    triangle distances) of a mesh of the reference sphere, plain Euclidean means.
    """
    centre = torch.tensor(CENTRE)
    samples = sample_points_from_meshes(mesh, 20 * n_points)[0]
    accuracy = ((samples - centre).norm(dim=-1) - RADIUS).abs().mean()
    directions = torch.randn(n_points, 3)
    on_sphere = centre + RADIUS * directions / directions.norm(dim=-1, keepdim=True)
    tris = mesh.verts_packed()[mesh.faces_packed()]
    first = torch.zeros(1, dtype=torch.int64)
    squared = point_face_distance(on_sphere, first, tris, first, n_points, 1e-12)
    return float(accuracy), float(squared.sqrt().mean())


def test_pytorch3d_marching_cubes_conventions() -> None:
    # The facts marching.py relies on: a (D, H, W) volume gives (w, h, d) vertices in voxel
    # units, and "larger inside" + reversed columns gives outward faces.
    n = 24
    axis = torch.linspace(-1.0, 1.0, n + 1)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    inside = 0.5 - ((x - 0.25) ** 2 + y**2 + z**2).sqrt()
    verts, faces = marching_cubes(inside[None], 0.0, return_local_coords=False)
    centre = verts[0].mean(dim=0)
    # the x offset shows up in the last column
    assert float(centre[2]) == pytest.approx(0.625 * n, abs=0.05)
    assert float(centre[0]) == pytest.approx(0.5 * n, abs=0.05)
    # the same volume through marching_cubes_grid is outward and in world units
    spacing = 2.0 / n
    verts, faces = marching_cubes_grid(inside, origin=(-1.0,) * 3, spacing=(spacing,) * 3)
    mesh = Meshes(verts=[verts], faces=[faces])
    offset = verts - torch.tensor([0.25, 0.0, 0.0])
    assert bool(((offset * mesh.verts_normals_packed()).sum(-1) > 0).all())
    assert float((offset.norm(dim=-1) - 0.5).abs().max()) < 0.02 * spacing


def test_marching_cubes_grid_watertight_with_exact_zeros() -> None:
    # Box faces on grid planes put exact zeros on the level (degenerate triangles in the
    # raw CPU kernel); the sign-volume path stays closed and exact.
    box = BoxField(half_size=(0.2, 0.2, 0.2), field_type="sdf")
    result = extract_mesh(box, resolution=80, start_resolution=20, bounds=0.5)
    faces = result.mesh.faces_packed()
    assert faces.shape[0] > 0
    assert boundary_edge_count(faces) == 0
    verts = result.mesh.verts_packed()
    assert float(box.signed_distance(verts).detach().abs().max()) < 1e-6
    # marching cubes bevels the 12 box edges: a prism of legs one voxel (0.0125) each
    bevel = 12 * 0.4 * 0.0125**2 / 2
    assert signed_volume(result.mesh) == pytest.approx(0.4**3 - bevel, abs=0.05 * bevel)


def test_sphere_chamfer_below_one_percent_of_voxel() -> None:
    resolution = 128
    voxel = 1.1 / resolution
    result = extract_mesh(sphere_field(), resolution=resolution, start_resolution=32)
    assert result.stats.status == "surface"
    assert not result.stats.touches_bounds
    assert boundary_edge_count(result.mesh.faces_packed()) == 0
    accuracy, completeness = sphere_chamfer_l1(result.mesh)
    chamfer = 0.5 * (accuracy + completeness)
    # measured: about 0.41% of the voxel (3.5e-5 world units); the flat triangles' chord
    # error dominates, it shrinks like voxel^2
    assert chamfer < 0.006 * voxel
    assert signed_volume(result.mesh) == pytest.approx(4 / 3 * math.pi * RADIUS**3, abs=1e-3)


def test_refinement_moves_vertices_onto_the_surface() -> None:
    centre = torch.tensor(CENTRE)
    for field_type in ("occupancy", "sdf"):
        field = sphere_field(field_type=field_type)
        plain = extract_mesh(field, resolution=64, start_resolution=16)
        refined = extract_mesh(field, resolution=64, start_resolution=16, refine_steps=2)
        assert torch.equal(plain.mesh.faces_packed(), refined.mesh.faces_packed())
        error_plain = ((plain.mesh.verts_packed() - centre).norm(dim=-1) - RADIUS).abs()
        error_refined = ((refined.mesh.verts_packed() - centre).norm(dim=-1) - RADIUS).abs()
        voxel = 1.1 / 64
        assert float(error_plain.max()) < 0.01 * voxel
        assert float(error_plain.mean()) > 1e-5
        assert float(error_refined.max()) < 2e-6  # float32 rounding
        stats = refined.stats
        assert stats.refine_points_evaluated == 2 * stats.n_verts
        assert stats.vertex_residual < 1e-3 * stats.vertex_residual_mc


def test_mise_matches_dense_with_far_fewer_points() -> None:
    # measured fractions of the dense evaluation: 9.8% (sphere, 128^3), 15.2% (demo, 64^3)
    cases = [(sphere_field(), 128, 32, 0.12), (demo_scene(), 64, 16, 0.25)]
    for field, resolution, start, fraction in cases:
        dense = extract_mesh(field, resolution=resolution, start_resolution=resolution)
        sparse = extract_mesh(field, resolution=resolution, start_resolution=start)
        assert torch.equal(dense.mesh.verts_packed(), sparse.mesh.verts_packed())
        assert torch.equal(dense.mesh.faces_packed(), sparse.mesh.faces_packed())
        n_dense = (resolution + 1) ** 3
        assert dense.stats.points_evaluated == n_dense
        assert sparse.stats.dense_points == n_dense
        assert sparse.stats.points_evaluated < fraction * n_dense
        levels = sparse.stats.levels
        assert levels[0].resolution == start
        assert levels[-1].resolution == resolution
        assert levels[0].points_evaluated == (start + 1) ** 3
        assert sum(level.points_evaluated for level in levels) == sparse.stats.points_evaluated
        assert len(dense.stats.levels) == 1


def test_sdf_field_gives_the_occupancy_mesh() -> None:
    # occupancy = -20 * sdf: same signs, proportional values, so the same mesh
    occupancy = extract_mesh(demo_scene(), resolution=64, start_resolution=16)
    sdf = extract_mesh(demo_scene(field_type="sdf"), resolution=64, start_resolution=16)
    assert sdf.stats.field_type == "sdf"
    assert torch.equal(occupancy.mesh.faces_packed(), sdf.mesh.faces_packed())
    torch.testing.assert_close(
        occupancy.mesh.verts_packed(), sdf.mesh.verts_packed(), atol=1e-6, rtol=0
    )


def test_normals_point_outward() -> None:
    centre = torch.tensor(CENTRE)
    for field_type in ("occupancy", "sdf"):
        result = extract_mesh(
            sphere_field(field_type=field_type), resolution=32, start_resolution=8
        )
        mesh = result.mesh
        outward = ((mesh.verts_packed() - centre) * mesh.verts_normals_packed()).sum(-1)
        assert bool((outward > 0).all()), field_type
        face_outward = (
            (mesh.verts_packed()[mesh.faces_packed()].mean(1) - centre)
            * mesh.faces_normals_packed()
        ).sum(-1)
        assert bool((face_outward > 0).all()), field_type
        assert signed_volume(mesh) > 0.0


def test_vertex_colours_are_the_field_rgb() -> None:
    field = demo_scene()
    result = extract_mesh(field, resolution=32, start_resolution=16, refine_steps=1)
    assert isinstance(result.mesh.textures, TexturesVertex)
    colours = result.mesh.textures.verts_features_packed()
    verts = result.mesh.verts_packed()
    with torch.no_grad():
        expected = field(verts[None]).rgb[0]
    torch.testing.assert_close(colours, expected, atol=1e-6, rtol=0)
    # a geometry-only field gives no textures
    network = OccupancyTextureField(hidden_size=16, n_blocks=1, rgb=False, field_type="sdf")
    result = extract_mesh(network, resolution=16, start_resolution=8)
    assert result.stats.n_faces > 0
    assert result.mesh.textures is None


def test_empty_and_full_fields() -> None:
    cases = [
        (-3.0, "occupancy", "empty"),
        (3.0, "occupancy", "full"),
        (0.2, "sdf", "empty"),
        (-0.2, "sdf", "full"),
    ]
    for value, field_type, status in cases:
        field = ConstantField(value=value, field_type=field_type)
        result = extract_mesh(field, resolution=64, start_resolution=16)
        assert result.stats.status == status
        assert result.is_empty
        assert result.stats.points_evaluated == 17**3
        assert tuple(result.mesh.verts_packed().shape) == (0, 3)
        assert tuple(result.mesh.faces_packed().shape) == (0, 3)
        assert result.mesh.isempty()


def test_chunk_size_bounds_every_call() -> None:
    field = CountingField(sphere_field())
    chunk_size = 1000
    result = extract_mesh(
        field, resolution=64, start_resolution=16, refine_steps=2, chunk_size=chunk_size
    )
    assert max(field.call_sizes) <= chunk_size
    assert result.stats.max_points_per_call == chunk_size
    assert result.stats.field_calls == len(field.call_sizes)
    stats = result.stats
    total = stats.points_evaluated + stats.refine_points_evaluated
    assert sum(field.call_sizes) == total + stats.colour_points_evaluated
    reference = extract_mesh(sphere_field(), resolution=64, start_resolution=16)
    assert result.stats.points_evaluated == reference.stats.points_evaluated


def test_latent_code() -> None:
    for radius in (0.2, 0.35):
        result = extract_mesh(
            LatentSphere(),
            latent=torch.tensor([[radius, 0.0]]),
            resolution=32,
            start_resolution=16,
            refine_steps=1,
        )
        radii = result.mesh.verts_packed().norm(dim=-1)
        assert float((radii - radius).abs().max()) < 1e-5
    network = OccupancyTextureField(hidden_size=16, n_blocks=1, latent_size=3, field_type="sdf")
    result = extract_mesh(network, latent=torch.randn(3), resolution=16, start_resolution=8)
    assert result.stats.status == "surface"
    with pytest.raises(ValueError, match="latent"):
        extract_mesh(network, latent=torch.randn(2, 3), resolution=16, start_resolution=8)


def test_open_surface_at_the_bounds() -> None:
    field = SphereField(radius=0.5)
    result = extract_mesh(field, resolution=32, start_resolution=16, bounds=0.4)
    assert result.stats.touches_bounds
    assert boundary_edge_count(result.mesh.faces_packed()) > 0


def test_invalid_arguments() -> None:
    field = sphere_field()
    bad_kwargs = [
        {"resolution": 96, "start_resolution": 32},
        {"resolution": 16, "start_resolution": 32},
        {"bounds": ((0.0, 0.0, 0.0), (1.0, -1.0, 1.0))},
        {"bounds": -1.0},
        {"chunk_size": 0},
        {"refine_steps": -1},
    ]
    for kwargs in bad_kwargs:
        with pytest.raises(ValueError):
            extract_mesh(field, **{"resolution": 32, "start_resolution": 8, **kwargs})
    with pytest.raises(ValueError, match="finite"):
        extract_mesh(ConstantField(value=float("nan")), resolution=8, start_resolution=8)


def test_slab_size_does_not_change_the_result() -> None:
    from unittest import mock

    from dvr_plugin.meshing import mise as mise_module

    field = demo_scene()
    reference = extract_mesh(field, resolution=64, start_resolution=16)
    for slab_points in (1, 3000):  # one plane per slab; a few planes per slab
        with mock.patch.object(mise_module, "SLAB_POINTS", slab_points):
            result = extract_mesh(field, resolution=64, start_resolution=16)
        assert result.stats.levels == reference.stats.levels
        assert torch.equal(result.mesh.faces_packed(), reference.mesh.faces_packed())
        assert torch.equal(result.mesh.verts_packed(), reference.mesh.verts_packed())


def test_grid_operations() -> None:
    cells = torch.zeros(5, 5, 5, dtype=torch.bool)
    cells[2, 2, 2] = True
    assert int(dilate_cells(cells).sum()) == 27
    assert int(cell_corners(cells).sum()) == 8
    assert tuple(subdivide_cells(cells).shape) == (10, 10, 10)
    assert int(subdivide_cells(cells).sum()) == 8
    inside = torch.zeros(3, 3, 3, dtype=torch.bool)
    inside[0, 0, 0] = True
    straddle = straddling_cells(inside)
    assert int(straddle.sum()) == 1
    assert bool(straddle[0, 0, 0])
    values = torch.rand(3, 3, 3)
    fine = upsample_values(values)
    assert fine.is_contiguous()
    assert torch.equal(fine[0::2, 0::2, 0::2], values)
    torch.testing.assert_close(fine[1, 1, 1], values[:2, :2, :2].mean())
    torch.testing.assert_close(fine[1, 0, 2], values[:2, 0, 1].mean())


def test_save_and_load_round_trip() -> None:
    import tempfile
    from pathlib import Path

    result = extract_mesh(demo_scene(), resolution=32, start_resolution=16)
    verts = result.mesh.verts_packed()
    faces = result.mesh.faces_packed()
    colours = result.mesh.textures.verts_features_packed()
    with tempfile.TemporaryDirectory() as folder:
        ply = Path(folder) / "scene.ply"
        save_mesh(result.mesh, ply)
        loaded = load_mesh(ply)
        torch.testing.assert_close(loaded.verts_packed(), verts, atol=0, rtol=0)
        assert torch.equal(loaded.faces_packed(), faces)
        assert isinstance(loaded.textures, TexturesVertex)
        torch.testing.assert_close(loaded.textures.verts_features_packed(), colours)

        ascii_ply = str(Path(folder) / "scene_ascii.ply")
        save_mesh(result.mesh, ascii_ply, binary=False, colors_as_uint8=True)
        loaded = load_mesh(ascii_ply)
        torch.testing.assert_close(loaded.verts_packed(), verts, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            loaded.textures.verts_features_packed(), colours, atol=1 / 255, rtol=0
        )

        obj = Path(folder) / "scene.obj"
        save_mesh(result.mesh, obj, decimal_places=8)
        loaded = load_mesh(obj)
        torch.testing.assert_close(loaded.verts_packed(), verts, atol=1e-7, rtol=0)
        assert torch.equal(loaded.faces_packed(), faces)

        with pytest.raises(ValueError, match="end in"):
            save_mesh(result.mesh, Path(folder) / "scene.stl")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    cpu = extract_mesh(demo_scene(), resolution=64, start_resolution=16)
    gpu = extract_mesh(demo_scene().cuda(), resolution=64, start_resolution=16)
    assert gpu.mesh.device.type == "cuda"
    assert cpu.stats.points_evaluated == gpu.stats.points_evaluated
    # the CUDA kernel may emit triangles in another order; vertices are ordered by edge key
    assert torch.equal(
            canonical_faces(cpu.mesh.faces_packed()),
            canonical_faces(gpu.mesh.faces_packed().cpu()),
        )
    torch.testing.assert_close(
        cpu.mesh.verts_packed(), gpu.mesh.verts_packed().cpu(), atol=1e-5, rtol=0
    )


def test_benchmark_smoke() -> None:
    from integration.benchmarks.bench_meshing import format_table, run_benchmark

    report = run_benchmark(
        resolutions=(16,),
        start_resolution=8,
        hidden_size=16,
        fit_steps=0,
        fit_batch=256,
        isolate=False,
    )
    assert [row["field"] for row in report["rows"]] == ["analytic", "network"]
    analytic = report["rows"][0]
    assert analytic["same_mesh"] == "identical"
    assert analytic["dense"]["points"] == 17**3
    assert analytic["mise"]["points"] < 17**3
    assert "| analytic | 16^3 |" in format_table(report)
