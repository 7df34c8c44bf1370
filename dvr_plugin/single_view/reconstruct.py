"""
``dvr reconstruct``: one image in, a textured mesh and renders from new viewpoints out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from ..data.frame import WorldFrame
from ..data.io import read_rgb
from ..engine.evaluation import orbit_cameras
from ..engine.run_outputs import write_json
from ..io import make_dirs
from ..visualize import colorize_normals, image_grid, save_gif, save_png
from .trainer import model_from_checkpoint, render_with_codes


def read_input_image(
    path: str,
    *,
    image_size: Sequence[int],
    background: Sequence[float] = (1.0, 1.0, 1.0),
    resize: bool = False,
) -> torch.Tensor:
    """
    Read an input image as `(H, W, 3)` floats in [0, 1].

    An alpha channel is composited over ``background`` (the colour the model was trained
    with). The image must have the training size ``image_size`` unless ``resize`` (bilinear).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, or of another size without ``resize``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Input image not found: {path}")
    rgb, alpha = read_rgb(path)
    image = torch.from_numpy(rgb)
    if alpha is not None:
        a = torch.from_numpy(alpha)[..., None]
        image = image * a + torch.tensor(list(background), dtype=image.dtype) * (1 - a)
    height, width = int(image_size[0]), int(image_size[1])
    if tuple(image.shape[:2]) != (height, width):
        if not resize:
            raise ValueError(
                f"{path} is {image.shape[0]}x{image.shape[1]} pixels but the model was trained "
                f"on {height}x{width} images; pass --resize to resize it (bilinear), or crop it "
                "to the object as in the training images."
            )
        image = F.interpolate(
            image.permute(2, 0, 1)[None],
            size=(height, width),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )[0].permute(1, 2, 0)
    return image.clamp(0.0, 1.0).float()


CATEGORY_UNITS = "the category's object frame (the frame of its ground-truth meshes)"


def reconstruction_frame(state: dict) -> WorldFrame:
    """
    The world frame of a single-view checkpoint's reconstructions: the ``data_frame`` it
    records, else the category's object frame, in which the field is trained (objects
    centred, as their ground-truth meshes are): the identity.
    """
    stored = WorldFrame.from_dict(state.get("data_frame"))
    if stored is not None:
        return stored
    return WorldFrame(torch.eye(4, dtype=torch.float64), "single-view", CATEGORY_UNITS)


@torch.no_grad()
def reconstruct_image(
    image: str,
    checkpoint: str,
    out_dir: str,
    *,
    device: Union[str, torch.device] = "cpu",
    resolution: int = 128,
    n_frames: int = 24,
    render_size: int = 128,
    n_steps: int = 128,
    resize: bool = False,
    fps: int = 12,
    distance: Optional[float] = None,
    elevation: Optional[float] = None,
) -> dict[str, Any]:
    """
    Reconstruct the object in one image with a single-view checkpoint.

    Writes into ``out_dir``: ``mesh.ply`` (MISE + marching cubes of the conditioned field, with
    vertex colours, in the frame of :func:`reconstruction_frame`, which its header states;
    skipped when the field holds no surface), ``turntable.gif`` (colour |
    normals on an orbit like the training cameras), ``renders.png`` (the input next to views
    from around the object, colour above normals) and ``reconstruction.json``.

    Returns:
        The summary written to ``reconstruction.json``.
    """
    from ..meshing import extract_mesh, save_mesh

    start = time.perf_counter()
    device = torch.device(device)
    model, config, state = model_from_checkpoint(checkpoint, device=device)
    size = state.get("image_size")
    if not size:
        raise ValueError(f"{checkpoint} does not record the training image size.")
    picture = read_input_image(image, image_size=size, background=config.background, resize=resize)
    make_dirs(out_dir)
    code = model.encode(picture[None].to(device))
    extraction = extract_mesh(
        model.field, latent=code, resolution=resolution, start_resolution=min(32, resolution)
    )
    summary: dict[str, Any] = {
        "image": image,
        "checkpoint": checkpoint,
        "resolution": resolution,
        "mesh_faces": int(extraction.stats.n_faces),
        "mesh_status": extraction.stats.status,
    }
    frame = reconstruction_frame(state)
    summary["mesh_frame"] = frame.describe()
    if extraction.is_empty:
        summary["mesh"] = None
    else:
        save_mesh(
            frame.mesh_to_world(extraction.mesh),
            os.path.join(out_dir, "mesh.ply"),
            comments=frame.file_comments("world"),
        )
        summary["mesh"] = "mesh.ply"

    orbit = dict(state.get("orbit") or {})
    orbit.setdefault("distance", 2.0)
    orbit.setdefault("fov", 40.0)
    orbit.setdefault("elevation", 20.0)
    if distance is not None:
        orbit["distance"] = float(distance)
    if elevation is not None:
        orbit["elevation"] = float(elevation)
    cameras = orbit_cameras(n_frames, image_size=render_size, device=device, **orbit)
    rendered = render_with_codes(
        model.field,
        cameras,
        code.expand(n_frames, -1),
        (render_size, render_size),
        n_steps=n_steps,
        background=config.background,
        batch_size=8 if device.type == "cuda" else 2,
    )
    normals = [colorize_normals(rendered.normals[i], rendered.masks[i]) for i in range(n_frames)]
    frames = [
        torch.cat([rendered.images[i].clamp(0, 1), normals[i]], dim=1) for i in range(n_frames)
    ]
    save_gif(frames, os.path.join(out_dir, "turntable.gif"), fps=fps)
    shown = sorted(
        {round(k * n_frames / min(6, n_frames)) % n_frames for k in range(min(6, n_frames))}
    )
    big_input = F.interpolate(
        picture.permute(2, 0, 1)[None], size=(render_size, render_size), mode="nearest"
    )[0].permute(1, 2, 0)
    blank = torch.ones(render_size, render_size, 3)
    grid = image_grid(
        [
            [big_input, *[rendered.images[i].clamp(0, 1) for i in shown]],
            [blank, *[normals[i] for i in shown]],
        ]
    )
    save_png(grid, os.path.join(out_dir, "renders.png"))
    summary.update(
        {
            "turntable": "turntable.gif",
            "renders": "renders.png",
            "frames": n_frames,
            "render_size": render_size,
            "orbit": orbit,
            "seconds": time.perf_counter() - start,
        }
    )
    write_json(os.path.join(out_dir, "reconstruction.json"), summary)
    return summary
