"""
The comparison harness: four ways of rendering one scene from the same held-out cameras.

=====  ==========================================================================================
(a)    ``mesh_gt``: PyTorch3D ``MeshRenderer`` on the ground-truth mesh (rendered scenes only)
(b)    ``dvr``: DVR (:class:`~dvr_plugin.renderer.DVRRenderer`) on the field fitted by
       :class:`~dvr_plugin.training.Trainer`
(c)    ``volume``: a NeRF-style model, PyTorch3D ``ImplicitRenderer`` +
       ``EmissionAbsorptionRaymarcher`` with occupancy as alpha
       (:mod:`integration.compare.nerf_baseline`), trained on the same views with the same
       network, iterations, rays per step and optimiser
(d)    ``dvr_mesh``: ``MeshRenderer`` on the mesh extracted from DVR's field
       (:func:`dvr_plugin.meshing.extract_mesh`)
=====  ==========================================================================================

Per method: PSNR (whole image and inside the true mask), SSIM, mask IoU on the held-out views
(:func:`dvr_plugin.engine.image_metrics`), the z-depth error against the rasteriser's depth of
the ground-truth mesh (:func:`dvr_plugin.metrics.depth_error`), Chamfer-L1 / F@1% / normal
consistency of the geometry (:func:`dvr_plugin.metrics.evaluate_meshes`, Occupancy Networks
protocol; the fields' geometry is their extracted mesh), render time per view and its peak GPU
memory, training time and its peak GPU memory. :func:`run_comparison` writes ``results.json``,
``table.md`` and ``figure.png`` (rows = methods, columns = colour, depth, normals and error of
some held-out views).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch

from dvr_plugin.data.paths import shared_data_dir
from dvr_plugin.engine.config import positive
from dvr_plugin.engine.evaluation import RenderedViews, image_metrics, render_views
from dvr_plugin.engine.run_outputs import progress_bar, write_json
from dvr_plugin.io import make_dirs
from dvr_plugin.meshing import extract_mesh, save_mesh
from dvr_plugin.metrics import depth_error, evaluate_meshes
from dvr_plugin.training import (
    FitConfig,
    Trainer,
    load_config,
    load_fit_data,
    packaged_config,
    resolve_config,
)
from dvr_plugin.training.fit import MESH_SCORE_KEYS as FIT_MESH_SCORE_KEYS
from integration.benchmarks.common import (
    network_label,
    peak_memory,
    release_memory,
    reset_peak_memory,
    synchronize,
)

from .figure import comparison_figure
from .mesh_render import rasterize_views
from .nerf_baseline import VolumeBaselineTrainer, rendered_surface_level
from .report import markdown_report

SCENES = ("demo", "cow", "dtu")
METHODS = ("mesh_gt", "dvr", "volume", "dvr_mesh")
METHOD_LABELS = {
    "mesh_gt": "(a) MeshRenderer, ground-truth mesh",
    "dvr": "(b) DVR, fitted field",
    "volume": "(c) NeRF-style volume, same network",
    "dvr_mesh": "(d) MeshRenderer, DVR's mesh",
}
RENDERED_FORMATS = ("demo", "mesh")
# The mesh scores of a fit's report, less the Chamfer-L1 in paper units (x10).
MESH_SCORE_KEYS = tuple(key for key in FIT_MESH_SCORE_KEYS if key != "chamfer_l1_x10")


def default_data_path(scene: str) -> Optional[str]:
    """The shared data used for a scene (``None`` for the demo, which is built in code)."""
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {SCENES}, got {scene!r}.")
    if scene == "cow":
        return str(shared_data_dir() / "meshes" / "cow.obj")
    if scene == "dtu":
        return str(shared_data_dir() / "dtu_scan24_384" / "scan24")
    return None


def scene_config(
    scene: str,
    *,
    data: Optional[str] = None,
    device: Optional[str] = None,
    overrides: Sequence[str] = (),
) -> FitConfig:
    """
    The fit configuration of a scene: the packaged ``configs/<scene>.yaml`` with its data path
    set (``data``, default :func:`default_data_path`), the device, and ``key=value`` overrides
    (the same for DVR and the volume baseline).
    """
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {SCENES}, got {scene!r}.")
    items = []
    if scene == "demo":
        if data is not None:
            raise ValueError("The demo scene is built in code; it takes no --data.")
    else:
        path = data if data is not None else default_data_path(scene)
        items.append(f"data.path={json.dumps(path)}")
    if device is not None:
        items.append(f"device={device}")
    return load_config(packaged_config(scene), [*items, *overrides])


@dataclass
class ComparisonOptions:
    """
    Settings of the comparison beyond the fit configuration.

    Members:
        n_pts_per_ray: samples per ray of the volume baseline (training and rendering).
        figure_views: held-out views shown in the figure (spread over the held-out set).
        render_chunk: rays per call when the volume baseline renders an image (0: 16384 on
            CUDA, 4096 on the CPU).
        progress: tqdm progress bars.
        save_models: write the two fitted networks and the two extracted meshes.
    """

    n_pts_per_ray: int = 64
    figure_views: int = 3
    render_chunk: int = 0
    progress: bool = True
    save_models: bool = True

    def __post_init__(self) -> None:
        positive("n_pts_per_ray", self.n_pts_per_ray)
        positive("figure_views", self.figure_views)
        if self.render_chunk < 0:
            raise ValueError(f"render_chunk must be >= 0, got {self.render_chunk}.")


def run_comparison(
    config: FitConfig, out_dir: str, *, options: Optional[ComparisonOptions] = None
) -> dict[str, Any]:
    """
    Run the four methods on the scene of ``config`` and write ``results.json``, ``table.md`` and
    ``figure.png`` (plus the fitted networks and meshes with ``options.save_models``) into
    ``out_dir``.

    Args:
        config: the fit configuration (device ``"auto"`` picks CUDA and its overrides).
        out_dir: the output folder (created).
        options: :class:`ComparisonOptions`.

    Returns:
        The results also written to ``results.json``: ``scene``, ``machine``, ``settings`` and
        ``methods`` (one entry per name of :data:`METHODS`, with ``available`` and, where
        available, the metrics; ``None`` where a metric does not apply).
    """
    from tqdm.auto import tqdm

    options = options or ComparisonOptions()
    wall_start = time.perf_counter()
    config, device = resolve_config(config)
    make_dirs(out_dir)
    progress = options.progress
    chunk = options.render_chunk or (16384 if device.type == "cuda" else 4096)

    start = time.perf_counter()
    data = load_fit_data(config.data, background=config.background, device=device)
    data_seconds = time.perf_counter() - start
    val = data.val
    image_size = val.image_size
    rendered_scene = config.data.format in RENDERED_FORMATS
    gt_images, gt_masks = _reference_images(val, config.background, composite=not rendered_scene)
    n_views = len(val)
    scene = _Scene(
        config=config,
        device=device,
        data=data,
        gt_images=gt_images,
        gt_masks=gt_masks,
        out_dir=out_dir,
        options=options,
        render_chunk=chunk,
        mesh_resolution=config.eval.mesh_resolution or 128,
    )
    steps_bar = tqdm(total=4, desc="compare", disable=not progress, leave=False)
    methods: dict[str, dict[str, Any]] = {}
    renders: dict[str, Optional[RenderedViews]] = {}

    methods["mesh_gt"], renders["mesh_gt"] = _run_mesh_gt(scene)
    steps_bar.update(1)
    methods["dvr"], renders["dvr"], dvr_mesh = _run_dvr(scene)
    steps_bar.update(1)
    methods["dvr_mesh"], renders["dvr_mesh"] = _run_dvr_mesh(scene, methods["dvr"], dvr_mesh)
    del dvr_mesh
    release_memory(device)
    methods["volume"], renders["volume"] = _run_volume(scene)
    steps_bar.update(1)
    release_memory(device)
    ref_depths = scene.ref_depths
    mesh_resolution = scene.mesh_resolution
    mesh_points = config.eval.mesh_points
    parameters = methods["dvr"]["parameters"]
    for name in METHODS:
        methods[name]["label"] = METHOD_LABELS[name]
    results: dict[str, Any] = {
        "scene": _scene_name(config),
        "machine": _machine(device),
        "settings": {
            "data_format": config.data.format,
            "data_path": config.data.path,
            "image_size": list(image_size),
            "train_views": len(data.train),
            "held_out_views": n_views,
            "held_out_names": list(val.names),
            "network": {
                "hidden_size": config.model.hidden_size,
                "n_blocks": config.model.n_blocks,
                "n_frequencies": config.model.n_frequencies,
                "encoding": config.model.encoding,
                "label": network_label(config.model),
                "parameters": parameters,
            },
            "iterations": config.train.iterations,
            "time_budget_s": config.train.time_budget_s,
            "images_per_batch": config.train.images_per_batch,
            "rays_per_image": config.train.rays_per_image,
            "sampling": config.train.sampling,
            "lr": config.optim.lr,
            "lr_milestones": list(config.optim.lr_milestones),
            "dvr_step_milestones": {str(k): v for k, v in config.train.step_milestones.items()},
            "dvr_render_steps": config.eval.n_steps,
            "volume_samples_per_ray": options.n_pts_per_ray,
            "volume_render_chunk": chunk,
            "mesh_resolution": mesh_resolution,
            "mesh_points": mesh_points,
            "ground_truth_images": "as loaded"
            if rendered_scene
            else ("composited over the background with the true mask"),
            "depth_reference": "rasteriser z-depth of the ground-truth mesh"
            if ref_depths is not None
            else None,
            "options": asdict(options),
        },
        "methods": {name: methods[name] for name in METHODS},
        "timing": {"data_seconds": data_seconds},
    }
    figure_path = os.path.join(out_dir, "figure.png")
    shown = _spread(n_views, options.figure_views)
    comparison_figure(
        [(METHOD_LABELS[name], renders[name], methods[name].get("note")) for name in METHODS],
        gt_images,
        gt_masks,
        views=shown,
        view_names=[val.names[i] for i in shown],
        reference_depths=ref_depths,
        title=f"{results['scene']} - {results['machine']['device']}",
        path=figure_path,
    )
    steps_bar.update(1)
    steps_bar.close()
    written = {name for name in os.listdir(out_dir) if not name.startswith(".")}
    results["outputs"] = sorted(written | {"results.json", "table.md"})
    results["timing"]["wall_seconds"] = time.perf_counter() - wall_start
    with open(os.path.join(out_dir, "table.md"), "w") as handle:
        handle.write(markdown_report(results))
    write_json(os.path.join(out_dir, "results.json"), results)
    return results


# ---------------------------------------------------------------------------------------------
# The four methods


@dataclass
class _Scene:
    """What every method of one comparison shares."""

    config: FitConfig
    device: torch.device
    data: Any
    gt_images: torch.Tensor
    gt_masks: torch.Tensor
    out_dir: str
    options: ComparisonOptions
    render_chunk: int
    mesh_resolution: int
    ref_depths: Optional[torch.Tensor] = None

    @property
    def val(self):
        return self.data.val


def _run_mesh_gt(scene: _Scene) -> tuple[dict[str, Any], Optional[RenderedViews]]:
    """(a) the ground-truth mesh through MeshRenderer; its zbuf becomes the depth reference."""
    mesh, val, config = scene.data.mesh, scene.val, scene.config
    if mesh is None:
        return {
            "available": False,
            "note": "no ground-truth mesh for this data set: row (a), the depth error and the "
            "3D metrics are not available",
        }, None
    views, seconds, peak = _timed_views(
        lambda i: rasterize_views(
            mesh, val.cameras[[i]], val.image_size, background=config.background
        ),
        len(val),
        scene.device,
    )
    scene.ref_depths = views.depths
    entry = _image_scores(views, scene.gt_images, scene.gt_masks, None)
    entry.update(
        available=True,
        reference=True,
        depth_l1=0.0,
        render_seconds_per_view=seconds,
        render_peak_bytes=peak,
        train_seconds=None,
        train_peak_bytes=None,
        iterations=None,
        n_faces=int(mesh.num_faces_per_mesh()[0]),
        note="the reference: its rasteriser depth is the depth ground truth and the mesh "
        "is the geometry ground truth",
    )
    entry.update({key: None for key in MESH_SCORE_KEYS})
    return entry, views


def _run_dvr(scene: _Scene) -> tuple[dict[str, Any], RenderedViews, Any]:
    """(b) DVR: train with :class:`Trainer`, render the held-out views, extract the mesh."""
    config, val, device = scene.config, scene.val, scene.device
    trainer = Trainer(
        config=config, train_data=scene.data.train, val_data=None, out_dir=None, progress=False
    )
    train = _train_loop(trainer, config, device, desc="DVR", progress=scene.options.progress)
    field = trainer.field.eval()
    views, seconds, peak = _timed_views(
        lambda i: render_views(
            field,
            val.cameras[[i]],
            val.image_size,
            n_steps=config.eval.n_steps,
            n_secant_steps=config.train.n_secant_steps,
            background=config.background,
        ),
        len(val),
        device,
    )
    entry = _image_scores(views, scene.gt_images, scene.gt_masks, scene.ref_depths)
    entry.update(available=True, **train, render_seconds_per_view=seconds, render_peak_bytes=peak)
    entry["parameters"] = sum(p.numel() for p in field.parameters())
    geometry, mesh, extraction = _geometry(
        field,
        scene.data.mesh,
        resolution=scene.mesh_resolution,
        n_points=config.eval.mesh_points,
        seed=config.seed,
    )
    entry.update(geometry)
    entry["extraction_seconds"] = extraction
    if scene.options.save_models:
        trainer.save_checkpoint(os.path.join(scene.out_dir, "dvr_checkpoint.pt"))
        if mesh is not None:
            save_mesh(mesh, os.path.join(scene.out_dir, "dvr_mesh.ply"))
    return entry, views, mesh


def _run_dvr_mesh(
    scene: _Scene, dvr: dict[str, Any], mesh: Any
) -> tuple[dict[str, Any], Optional[RenderedViews]]:
    """(d) DVR's extracted mesh through MeshRenderer."""
    if mesh is None:
        return {"available": False, "note": "DVR's field holds no surface to mesh"}, None
    val, device = scene.val, scene.device
    mesh = mesh.to(device)
    views, seconds, peak = _timed_views(
        lambda i: rasterize_views(
            mesh, val.cameras[[i]], val.image_size, background=scene.config.background
        ),
        len(val),
        device,
    )
    entry = _image_scores(views, scene.gt_images, scene.gt_masks, scene.ref_depths)
    entry.update(
        available=True,
        render_seconds_per_view=seconds,
        render_peak_bytes=peak,
        train_seconds=dvr["train_seconds"],
        train_peak_bytes=dvr["train_peak_bytes"],
        iterations=dvr["iterations"],
        stopped_early=dvr["stopped_early"],
        extraction_seconds=dvr["extraction_seconds"],
        train_plus_meshing=True,
        n_faces=int(mesh.num_faces_per_mesh()[0]),
        note="the mesh scored as row (b)'s geometry; training time = DVR's plus the extraction",
    )
    entry.update({key: dvr.get(key) for key in MESH_SCORE_KEYS})
    return entry, views


def volume_baseline_config(config: FitConfig) -> FitConfig:
    """
    The volume baseline's configuration: the scene's, with the field read as NeRF-style alpha.
    The baseline composites occupancy probabilities along the ray, so a recipe that fits a
    signed-distance field with a view-dependent head (the real-capture recipe) is trained here
    as an occupancy field of the same size with DVR's texture head, the sphere start and the
    SDF-only terms dropped, and its mask supervised by the occupancy / free-space weights (1 when
    the recipe turned them off). Network size, encoding, optimiser, rays and steps stay the same.
    """
    if config.model.field_type == "occupancy" and config.model.colour == "texture":
        return config
    data = config.to_dict()
    model, loss = data["model"], data["loss"]
    model.update(field_type="occupancy", colour="texture", geometric_init_radius=None)
    loss.update(eikonal=0.0, mask=0.0)
    if loss["occupancy"] == 0 and loss["freespace"] == 0:
        loss.update(occupancy=1.0, freespace=1.0)
    return FitConfig.from_dict(data)


def _run_volume(scene: _Scene) -> tuple[dict[str, Any], RenderedViews]:
    """(c) the NeRF-style volume baseline: train, render the held-out views, extract a mesh."""
    config, val, device = volume_baseline_config(scene.config), scene.val, scene.device
    volume = VolumeBaselineTrainer(
        config=config, train_data=scene.data.train, n_pts_per_ray=scene.options.n_pts_per_ray
    )
    train = _train_loop(volume, config, device, desc="volume", progress=scene.options.progress)
    volume.field.eval()
    views, seconds, peak = _timed_views(
        lambda i: volume.model.render_views(
            val.cameras[[i]], val.image_size, chunk_size=scene.render_chunk
        ),
        len(val),
        device,
    )
    entry = _image_scores(views, scene.gt_images, scene.gt_masks, scene.ref_depths)
    entry.update(available=True, **train, render_seconds_per_view=seconds, render_peak_bytes=peak)
    entry["parameters"] = sum(p.numel() for p in volume.field.parameters())
    level = rendered_surface_level(volume.field, val.cameras, views.depths, views.masks)

    def geometry_at(level: Optional[float]) -> tuple[dict[str, Any], Any, float]:
        return _geometry(
            volume.field,
            scene.data.mesh,
            resolution=scene.mesh_resolution,
            n_points=config.eval.mesh_points,
            seed=config.seed,
            level=level,
        )

    geometry, mesh, extraction = geometry_at(level)
    entry.update(geometry)
    entry["extraction_seconds"] = extraction
    entry["mesh_level_logit"] = level
    level_text = "0.5 (no opaque pixel)" if level is None else f"{_sigmoid(level):.3f}"
    entry["note"] = (
        f"geometry: its occupancy level set at probability {level_text}, the median occupancy "
        "at its rendered depth (occupancy used as alpha need not reach 0.5 at the surface)"
    )
    if level is not None and scene.data.mesh is not None:
        at_half, _, _ = geometry_at(None)
        entry["geometry_at_level_0.5"] = at_half
        if at_half["mesh_faces"] == 0:
            entry["note"] += "; its 0.5 level set (DVR's level) is empty"
        else:
            entry["note"] += (
                f"; at 0.5 (DVR's level): Chamfer-L1 {at_half['chamfer_l1']:.4f}, F@1% "
                f"{at_half['f_score']:.3f}"
            )
    if scene.options.save_models:
        torch.save(volume.state_dict(), os.path.join(scene.out_dir, "volume_model.pt"))
        if mesh is not None:
            save_mesh(mesh, os.path.join(scene.out_dir, "volume_mesh.ply"))
    return entry, views


# ---------------------------------------------------------------------------------------------
# Pieces


def _reference_images(
    views, background: Sequence[float], *, composite: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(N, H, W, 3)` ground-truth images (on the CPU) and `(N, H, W)` bool masks."""
    images = views.images.detach().cpu().float()
    masks = views.masks.detach().cpu().bool()
    if composite:
        colour = torch.tensor(list(background), dtype=images.dtype)
        images = torch.where(masks[..., None], images, colour)
    return images, masks


def _timed_views(
    render_one: Callable[[int], RenderedViews], n_views: int, device: torch.device
) -> tuple[RenderedViews, float, Optional[int]]:
    """
    Render every view on its own (after one untimed warm-up render of view 0).

    Returns:
        the renders, the mean seconds per view (results copied to the CPU included) and the
        peak GPU memory of the timed renders.
    """
    render_one(0)
    reset_peak_memory(device)
    parts, times = [], []
    for i in range(n_views):
        synchronize(device)
        start = time.perf_counter()
        parts.append(render_one(i))
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = peak_memory(device)
    views = RenderedViews(
        images=torch.cat([p.images for p in parts]),
        masks=torch.cat([p.masks for p in parts]),
        depths=torch.cat([p.depths for p in parts]),
        normals=torch.cat([p.normals for p in parts]),
    )
    return views, sum(times) / len(times), peak


def _train_loop(
    trainer: Any, config: FitConfig, device: torch.device, *, desc: str, progress: bool
) -> dict[str, Any]:
    """
    Run ``trainer.train_step()`` until ``train.iterations`` (or ``train.time_budget_s`` of
    training time), timing every step.

    Returns:
        ``iterations``, ``train_seconds``, ``seconds_per_iteration``, ``train_peak_bytes``,
        ``stopped_early`` and ``last`` (the last step's statistics).
    """
    total = config.train.iterations
    budget = config.train.time_budget_s
    bar = progress_bar(total=total, enabled=progress, desc=desc)
    last: dict[str, float] = {}
    stopped = False
    reset_peak_memory(device)
    try:
        while trainer.step < total:
            if budget is not None and trainer.train_seconds >= budget:
                stopped = True
                break
            start = time.perf_counter()
            last = trainer.train_step()
            synchronize(device)
            trainer.train_seconds += time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.4g}", refresh=False)
    finally:
        bar.close()
    return {
        "iterations": trainer.step,
        "train_seconds": trainer.train_seconds,
        "seconds_per_iteration": trainer.train_seconds / max(trainer.step, 1),
        "train_peak_bytes": peak_memory(device),
        "stopped_early": stopped,
        "last": last,
    }


def _image_scores(
    rendered: RenderedViews,
    images: torch.Tensor,
    masks: torch.Tensor,
    ref_depths: Optional[torch.Tensor],
) -> dict[str, Any]:
    """Held-out PSNR / SSIM / mask IoU and (with a reference) the z-depth L1 error."""
    scores = image_metrics(rendered, images, masks)
    if ref_depths is None:
        scores["depth_l1"] = None
        return scores
    per_view = depth_error(rendered.depths, ref_depths, pred_mask=rendered.masks > 0.5)
    finite = per_view[torch.isfinite(per_view)]
    scores["depth_l1"] = float(finite.mean()) if finite.numel() else math.nan
    scores["per_view"]["depth_l1"] = [float(v) for v in per_view]
    return scores


def _geometry(
    field,
    gt_mesh,
    *,
    resolution: int,
    n_points: int,
    seed: int,
    level: Optional[float] = None,
) -> tuple[dict[str, Any], Any, float]:
    """
    Extract a field's surface (MISE + marching cubes, at ``level``: a logit, default 0) and
    score it against the ground truth.

    Returns:
        ``(scores, mesh or None, extraction seconds)``; scores are ``None`` without a ground
        truth, worst-case values (``EMPTY_VALUES``) for an empty mesh.
    """
    start = time.perf_counter()
    extraction = extract_mesh(
        field, resolution=resolution, start_resolution=min(32, resolution), level=level
    )
    seconds = time.perf_counter() - start
    mesh = None if extraction.is_empty else extraction.mesh
    scores: dict[str, Any] = {key: None for key in MESH_SCORE_KEYS}
    if gt_mesh is not None:
        if mesh is None:
            from dvr_plugin.metrics import EMPTY_VALUES

            scores = {key: EMPTY_VALUES.get(key) for key in MESH_SCORE_KEYS}
        else:
            values = evaluate_meshes(
                mesh.to(gt_mesh.device), gt_mesh, n_points=n_points, n_iou_points=0, seed=seed
            )
            for key in MESH_SCORE_KEYS:
                value = values[key]
                scores[key] = float(value.reshape(-1)[0])
    scores["mesh_faces"] = 0 if mesh is None else int(mesh.num_faces_per_mesh()[0])
    return scores, mesh, seconds


def _sigmoid(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit))


def _spread(n: int, k: int) -> list[int]:
    """``min(k, n)`` indices spread evenly over ``range(n)``."""
    k = min(k, n)
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _scene_name(config: FitConfig) -> str:
    if config.data.format == "demo":
        return "demo scene"
    return os.path.basename(os.path.normpath(str(config.data.path)))


def _machine(device: torch.device) -> dict[str, Any]:
    import pytorch3d

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return {
        "device": name,
        "device_type": device.type,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch3d": pytorch3d.__version__,
    }
