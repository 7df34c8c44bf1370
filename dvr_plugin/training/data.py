"""
Training data for a fit: load (or render) the views of ``config.data`` and split them.

Every format ends as :class:`dvr_plugin.data.MultiViewData` in the normalised object frame (the
object inside the unit cube). ``"demo"`` builds its scene in code: the analytic
:func:`dvr_plugin.fields.shapes.demo_scene` is meshed with :func:`dvr_plugin.meshing.extract_mesh`
(vertex colours from its texture) and rendered with PyTorch3D's ``MeshRenderer``, so the ground
truth comes from a different renderer than the one being fitted, and the mesh doubles as the
ground truth of the 3D metrics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..data import (
    MultiViewData,
    load_dtu,
    load_dtu_monosdf,
    load_dvr_layout,
    load_nerf_synthetic,
    render_mesh_views,
)
from ..renderer.rays import check_cameras
from .config import DataConfig


@dataclass
class FitData:
    """
    Members:
        train: the training views.
        val: the held-out views.
        mesh: the ground-truth mesh in the normalised frame (``Meshes`` of one) when the data
            came from a mesh, else ``None``.
    """

    train: MultiViewData
    val: MultiViewData
    mesh: Any = None


def demo_mesh(*, sphere_level: int = 3, box_level: int = 3):
    """
    The built-in demo scene as a textured triangle mesh built in code: the parts of
    :func:`dvr_plugin.fields.shapes.demo_scene` (a box with two spheres resting on it) as an
    ico-sphere and a subdivided cube each, with vertex colours from the analytic parts' texture.

    Args:
        sphere_level: ico-sphere subdivision level (3: 1280 faces per sphere).
        box_level: subdivisions of the 12-triangle cube (3: 768 faces).

    Returns:
        a ``Meshes`` of one (the parts joined as one scene) with ``TexturesVertex``.
    """
    from pytorch3d.ops import SubdivideMeshes
    from pytorch3d.renderer import TexturesVertex
    from pytorch3d.structures import Meshes, join_meshes_as_scene
    from pytorch3d.utils import ico_sphere

    from ..fields.shapes import BoxField, SphereField, demo_scene

    parts = []
    with torch.no_grad():
        for part in demo_scene().parts:
            if isinstance(part, SphereField):
                unit = ico_sphere(sphere_level)
                verts = unit.verts_packed() * part.radius + part.centre
                faces = unit.faces_packed()
            elif isinstance(part, BoxField):
                corners = torch.tensor(
                    [[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)]
                )
                cube = Meshes(verts=[corners], faces=[_CUBE_FACES])
                for _ in range(box_level):
                    cube = SubdivideMeshes()(cube)
                verts = cube.verts_packed() * part.half_size + part.centre
                faces = cube.faces_packed()
            else:  # pragma: no cover - the demo scene holds boxes and spheres only
                raise ValueError(f"Unexpected demo part {type(part).__name__}.")
            rgb = part(verts[None]).rgb[0].clamp(0.0, 1.0)
            parts.append(
                Meshes(
                    verts=[verts], faces=[faces], textures=TexturesVertex(verts_features=[rgb])
                )
            )
    return join_meshes_as_scene(parts)


# The 12 outward-facing triangles of the cube with corners (x, y, z) in {-1, 1}^3, indexed
# 4x + 2y + z with x, y, z in {0, 1}.
_CUBE_FACES = torch.tensor(
    [
        [0, 1, 3], [0, 3, 2],  # x = -1
        [4, 6, 7], [4, 7, 5],  # x = +1
        [0, 4, 5], [0, 5, 1],  # y = -1
        [2, 3, 7], [2, 7, 6],  # y = +1
        [0, 2, 6], [0, 6, 4],  # z = -1
        [1, 5, 7], [1, 7, 3],  # z = +1
    ]
)


def load_views(
    config: DataConfig, *, background: list, device: torch.device | str = "cpu"
) -> tuple[MultiViewData, Any]:
    """
    All views of ``config`` (before the split), downscaled as asked.

    Args:
        config: the data section.
        background: RGB of empty pixels for rendered formats (and NeRF-synthetic's alpha).
        device: where meshes are rendered (``"demo"`` / ``"mesh"``); loaded files stay on the
            CPU until :func:`load_fit_data` moves them.

    Returns:
        ``(views, mesh)``: :class:`MultiViewData` and the ground-truth mesh (or ``None``).
    """
    fmt = config.format
    args = dict(config.loader_args)
    mesh = None
    if fmt in ("demo", "mesh"):
        source = demo_mesh() if fmt == "demo" else _existing(config.path, "mesh file")
        size = config.image_size * config.supersample
        options: dict[str, Any] = dict(
            num_views=config.n_views,
            image_size=size,
            layout=config.layout,
            distance=config.camera_distance,
            fov=config.fov,
            elevation=config.elevation,
            elevation_range=tuple(config.elevation_range),
            longest_side=config.longest_side,
            shading=config.shading,
            background=tuple(background),
            device=device,
        )
        if fmt == "demo":
            options["normalize"] = False  # the analytic scene already lies in the unit cube
        options.update(args)
        rendered = render_mesh_views(source, **options)
        views, mesh = rendered.data, rendered.mesh
        if config.supersample > 1:
            views = views.downscale(config.supersample)
    elif fmt == "dtu":
        views = load_dtu(_existing(config.path, "DTU scan folder"), **args)
    elif fmt == "monosdf":
        views = load_dtu_monosdf(_existing(config.path, "MonoSDF scan folder"), **args)
    elif fmt == "nerf-synthetic":
        args.setdefault("background", tuple(background))
        views = load_nerf_synthetic(_existing(config.path, "NeRF-synthetic scene folder"), **args)
    elif fmt == "dvr":
        views = load_dvr_layout(_existing(config.path, "DVR-layout object folder"), **args)
    else:  # pragma: no cover - DataConfig validates the format
        raise ValueError(f"Unknown data format {fmt!r}.")
    if config.downscale > 1:
        views = views.downscale(config.downscale)
    return views, mesh


def load_fit_data(
    config: DataConfig, *, background: list, device: torch.device | str = "cpu"
) -> FitData:
    """
    Load the views of ``config``, split off the held-out views and move both to ``device``.

    Held-out views: ``config.held_out`` positions when given, else every
    ``config.held_out_every``-th view.
    """
    views, mesh = load_views(config, background=background, device=device)
    train, val = views.split(every=config.held_out_every, held_out=config.held_out)
    check_training_views(train, empty_masks=config.empty_masks, what="training")
    check_training_views(val, empty_masks="ignore", what="held-out")
    return FitData(train=train.to(device), val=val.to(device), mesh=mesh)


def check_training_views(views: Any, *, empty_masks: str = "error", what: str = "training") -> None:
    """
    Check a view set before training, with a clear ``ValueError`` for each problem: shapes and
    counts of images / masks / depths / cameras that disagree, non-finite cameras or images,
    and (per ``empty_masks``: ``"error"``, ``"warn"``, ``"ignore"``) views whose mask is empty.

    Args:
        views: a :class:`MultiViewData` (or anything with ``images`` `(N, H, W, 3)`, ``masks``
            `(N, H, W)`, ``depths`` `(N, H, W)` or ``None``, ``cameras`` and ``names``).
    """
    images, masks, depths = views.images, views.masks, getattr(views, "depths", None)
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"The {what} images must be (N, H, W, 3), got {tuple(images.shape)}.")
    n, height, width = images.shape[:3]
    if n == 0:
        raise ValueError(f"There are no {what} views.")
    if tuple(masks.shape) != (n, height, width):
        raise ValueError(
            f"The {what} masks have shape {tuple(masks.shape)} but the images "
            f"{tuple(images.shape)}: there must be one (H, W) mask per image."
        )
    if depths is not None and tuple(depths.shape) != (n, height, width):
        raise ValueError(
            f"The {what} depth maps have shape {tuple(depths.shape)}; expected "
            f"{(n, height, width)}."
        )
    if len(views.cameras) != n:
        raise ValueError(
            f"Got {len(views.cameras)} cameras for {n} {what} images; there must be one camera "
            "per image."
        )
    check_cameras(views.cameras)
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"The {what} images hold non-finite values.")
    names = list(getattr(views, "names", [str(i) for i in range(n)]))
    empty = [names[i] for i in range(n) if not bool(masks[i].any())]
    if len(empty) == n and what == "training":
        raise ValueError(
            f"Every {what} mask is empty: there is no object to fit. Check the mask folder and "
            "threshold."
        )
    if empty and empty_masks != "ignore":
        message = (
            f"{len(empty)} {what} view(s) have an empty object mask: {', '.join(empty[:10])}"
            f"{' ...' if len(empty) > 10 else ''}."
        )
        if empty_masks == "error":
            raise ValueError(message + " Set data.empty_masks=warn to train on them anyway.")
        import warnings

        warnings.warn(message, stacklevel=2)


def _existing(path: Optional[str], what: str) -> str:
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(f"The {what} {path!r} does not exist.")
    return path
