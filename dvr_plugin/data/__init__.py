"""
Multi-view data sets as :class:`MultiViewData`: images, masks, optional depth and PyTorch3D
cameras in one normalised object frame (the object inside the unit cube ``[-0.5, 0.5]^3``).

Loaders: :func:`load_dtu` (IDR / NeuS layout), :func:`load_dtu_monosdf` (MonoSDF 384x384 crop),
:func:`load_nerf_synthetic`, :func:`load_dvr_layout` (the reference DVR layout) and
:func:`render_mesh_views` (synthetic renders of any mesh); :func:`detect_data_format` tells
which of these a path holds. See ``docs/data.md``.
"""

from .detect import DetectedFormat, detect_data_format
from .dtu import load_dtu, load_dtu_monosdf, monosdf_crop_matrix
from .dtu_like import make_dtu_like_scene
from .dvr_layout import load_dvr_layout, write_dvr_layout
from .multiview import MultiViewData, as_ndc_perspective, index_cameras
from .nerf_synthetic import load_nerf_synthetic
from .paths import find_shared_data, missing_data_message, shared_data_dir
from .synthetic import (
    MeshNormalization,
    SyntheticViews,
    cameras_looking_at_origin,
    fibonacci_sphere,
    load_mesh,
    normalize_mesh,
    random_elevation,
    render_mesh_views,
    turntable,
)

__all__ = [
    "DetectedFormat",
    "MeshNormalization",
    "MultiViewData",
    "SyntheticViews",
    "as_ndc_perspective",
    "cameras_looking_at_origin",
    "detect_data_format",
    "fibonacci_sphere",
    "find_shared_data",
    "index_cameras",
    "load_dtu",
    "load_dtu_monosdf",
    "load_dvr_layout",
    "load_mesh",
    "load_nerf_synthetic",
    "make_dtu_like_scene",
    "missing_data_message",
    "monosdf_crop_matrix",
    "normalize_mesh",
    "random_elevation",
    "render_mesh_views",
    "shared_data_dir",
    "turntable",
    "write_dvr_layout",
]
