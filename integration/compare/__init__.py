"""
Side-by-side comparison of four renderers on one scene and its held-out cameras: PyTorch3D's
``MeshRenderer`` on the ground-truth mesh, DVR on its fitted field, a NeRF-style
``ImplicitRenderer`` + ``EmissionAbsorptionRaymarcher`` trained the same way, and
``MeshRenderer`` on DVR's extracted mesh. See ``docs/comparison.md``.

    python -m integration.compare --scene cow --out outputs/compare_cow
"""

from .figure import comparison_figure, error_map
from .harness import (
    METHOD_LABELS,
    METHODS,
    SCENES,
    ComparisonOptions,
    default_data_path,
    run_comparison,
    scene_config,
)
from .mesh_render import rasterize_views
from .nerf_baseline import (
    BoxStratifiedRaysampler,
    OccupancyVolumeFunction,
    VolumeBaseline,
    VolumeBaselineTrainer,
    VolumeRenderOutput,
    rendered_surface_level,
)
from .report import markdown_report, markdown_table

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "SCENES",
    "BoxStratifiedRaysampler",
    "ComparisonOptions",
    "OccupancyVolumeFunction",
    "VolumeBaseline",
    "VolumeBaselineTrainer",
    "VolumeRenderOutput",
    "comparison_figure",
    "default_data_path",
    "error_map",
    "markdown_report",
    "markdown_table",
    "rasterize_views",
    "rendered_surface_level",
    "run_comparison",
    "scene_config",
]
