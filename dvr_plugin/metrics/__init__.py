"""
Evaluation metrics: the Occupancy Networks / DVR mesh and point-cloud protocol, Kaolin-style
metrics under Kaolin's names and conventions, the observed-region (DTU-style) variant, and
image metrics. See ``docs/metrics.md``.
"""

from .image import depth_error, mask_iou, psnr, ssim
from .kaolin_compat import (
    check_sign,
    index_vertices_by_faces,
    kaolin_available,
    kaolin_chamfer_distance,
    kaolin_f_score,
    point_to_mesh_distance,
)
from .mesh import (
    evaluate_meshes,
    is_watertight,
    mesh_iou,
    meshes_unit_cube_transform,
    normalize_meshes,
    points_inside_meshes,
    sample_surface,
    winding_numbers,
)
from .observed import evaluate_observed, visible_points
from .pointcloud import (
    DEFAULT_THRESHOLDS,
    EMPTY_VALUES,
    chamfer_l1,
    dvr_thresholds,
    evaluate_pointclouds,
    f_score,
    nearest_neighbor_distances,
    unit_cube_transform,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "EMPTY_VALUES",
    "chamfer_l1",
    "check_sign",
    "depth_error",
    "dvr_thresholds",
    "evaluate_meshes",
    "evaluate_observed",
    "evaluate_pointclouds",
    "f_score",
    "index_vertices_by_faces",
    "is_watertight",
    "kaolin_available",
    "kaolin_chamfer_distance",
    "kaolin_f_score",
    "mask_iou",
    "mesh_iou",
    "meshes_unit_cube_transform",
    "nearest_neighbor_distances",
    "normalize_meshes",
    "point_to_mesh_distance",
    "points_inside_meshes",
    "psnr",
    "sample_surface",
    "ssim",
    "unit_cube_transform",
    "visible_points",
    "winding_numbers",
]
