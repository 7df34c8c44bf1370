"""
Evaluating single-view reconstruction on held-out objects, against retrieval baselines.

For every object of the test split:

1. **DVR** (the trained model): encode view ``input_view`` (0, as in the reference), extract
   the surface of the conditioned field with MISE + marching cubes
   (:func:`dvr_plugin.meshing.extract_mesh`) and score it against the object's true shape.
2. **Retrieval** (a baseline that needs no 3D decoder): encode the same input image with the
   trained encoder, find the nearest code (Euclidean) among the codes of *every view of every
   training object*, and return that training object's true shape. It answers "does the model
   do better than recognising the closest training shape?" (Tatarchenko et al., CVPR 2019).
3. **Oracle retrieval** (optional, an upper bound for any retrieval method): the training shape
   nearest to the test object's *true* shape in Chamfer-L1; it uses the ground truth, so it is
   not a method, only a reference point.

Scores (:func:`dvr_plugin.metrics.evaluate_pointclouds`, Occupancy Networks protocol):
``n_points`` surface samples with normals on the prediction and on the truth, both moved and
scaled by the transform that maps the truth's samples to a box with longest side 1; Chamfer-L1
(mean of accuracy and completeness), normal consistency and F-score at 1% of that box. An
empty prediction gets the worst values (:data:`dvr_plugin.metrics.EMPTY_VALUES`). Results are
averaged per class, then over classes (the class mean, as in the papers), and over objects.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch

from ..engine.run_outputs import write_json
from ..io import atomic_write, make_dirs
from ..metrics import evaluate_pointclouds, sample_surface
from .dataset import CategoryData, GroundTruth, load_category
from .trainer import encode_views, model_from_checkpoint, render_with_codes, spread_objects

METRICS = ("chamfer_l1", "normal_consistency", "f_score")
METRIC_TITLES = {
    "chamfer_l1": "Chamfer-L1 ↓",
    "normal_consistency": "normal consistency ↑",
    "f_score": "F@1% ↑",
}
METHODS = ("dvr", "retrieval", "oracle")
METHOD_TITLES = {
    "dvr": "DVR (single view)",
    "retrieval": "retrieval (nearest encoder code)",
    "oracle": "oracle retrieval (nearest true shape)",
}


def shape_samples(
    shape: Union[GroundTruth, Any], n_points: int, *, seed: int = 0
) -> tuple[torch.Tensor, Optional[torch.Tensor], int]:
    """
    Surface samples of a shape: ``(points (n, 3), normals (n, 3) or None, count)``.

    A mesh (``Meshes`` of one, or a :class:`GroundTruth` holding one) is sampled area-uniformly
    (seeded); a point cloud is subsampled without replacement (all points when it has fewer);
    an empty mesh gives ``count = 0``.
    """
    mesh = shape.mesh if isinstance(shape, GroundTruth) else shape
    if isinstance(shape, GroundTruth) and mesh is None:
        points, normals = shape.points, shape.normals
        generator = torch.Generator().manual_seed(seed)
        if points.shape[0] > n_points:
            keep = torch.randperm(points.shape[0], generator=generator)[:n_points].to(points.device)
            points = points[keep]
            normals = None if normals is None else normals[keep]
        return points, normals, int(points.shape[0])
    if mesh is None or mesh.isempty():
        device = mesh.device if mesh is not None else torch.device("cpu")
        zeros = torch.zeros(n_points, 3, device=device)
        return zeros, zeros.clone(), 0
    devices = [mesh.device] if mesh.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        points, normals = sample_surface(mesh, n_points)
    return points[0], normals[0], n_points


def score_samples(
    pred: tuple[torch.Tensor, Optional[torch.Tensor], int],
    gt: tuple[torch.Tensor, Optional[torch.Tensor], int],
) -> dict[str, float]:
    """Chamfer-L1, accuracy, completeness, normal consistency, F@1% of two sample sets."""
    pred_points, pred_normals, pred_count = pred
    gt_points, gt_normals, gt_count = gt
    device = gt_points.device
    with_normals = pred_normals is not None and gt_normals is not None
    scores = evaluate_pointclouds(
        pred_points[None].to(device),
        gt_points[None],
        pred_normals=pred_normals[None].to(device) if with_normals else None,
        gt_normals=gt_normals[None] if with_normals else None,
        pred_lengths=torch.tensor([pred_count], device=device),
        gt_lengths=torch.tensor([gt_count], device=device),
        normalize="gt",
    )
    out = {}
    for key in ("chamfer_l1", "accuracy", "completeness", "normal_consistency"):
        if key in scores:
            out[key] = float(scores[key].reshape(-1)[0])
    out["f_score"] = float(scores["f_score"].reshape(-1)[0])
    out["precision"] = float(scores["precision"].reshape(-1)[0])
    out["recall"] = float(scores["recall"].reshape(-1)[0])
    out["empty"] = pred_count == 0
    return out


def aggregate(rows: Sequence[dict[str, Any]], method: str, classes: Sequence[str]) -> dict:
    """Per-class means, the mean over classes and the mean over objects of one method."""
    per_class: dict[str, dict[str, float]] = {}
    for class_name in classes:
        members = [r[method] for r in rows if r["class"] == class_name and method in r]
        if not members:
            continue
        per_class[class_name] = {
            metric: _mean([m[metric] for m in members if metric in m]) for metric in METRICS
        }
        per_class[class_name]["objects"] = len(members)
        per_class[class_name]["empty"] = sum(1 for m in members if m.get("empty"))
    everyone = [r[method] for r in rows if method in r]
    return {
        "per_class": per_class,
        "class_mean": {
            metric: _mean([c[metric] for c in per_class.values()]) for metric in METRICS
        },
        "object_mean": {
            metric: _mean([m[metric] for m in everyone if metric in m]) for metric in METRICS
        },
        "objects": len(everyone),
    }


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def results_markdown(report: dict[str, Any]) -> str:
    """
    The comparison as markdown: one table per metric, a row per method, a column per class
    plus the mean over classes and the mean over objects.
    """
    methods = [m for m in METHODS if m in report["methods"]]
    dvr = report["methods"]["dvr"]
    names = report.get("class_names", {})
    classes = list(dvr["per_class"])
    counts = [str(dvr["per_class"][c]["objects"]) for c in classes]
    header = (
        ["method"]
        + [f"{names.get(c, c)} ({n})" for c, n in zip(classes, counts, strict=True)]
        + ["**class mean**", f"object mean ({report['n_objects']})"]
    )
    settings = report["settings"]
    lines = [
        f"Single-view reconstruction on the `{report['split']}` split: {report['n_objects']} "
        f"objects, input view {settings['input_view']}, model after {settings['iterations']} "
        f"iterations ({settings['supervision']} supervision).",
    ]
    for metric in METRICS:
        lines += ["", f"**{METRIC_TITLES[metric]}**", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for method in methods:
            stats = report["methods"][method]
            cells = [METHOD_TITLES[method]]
            cells += [_fmt(stats["per_class"].get(c, {}).get(metric), metric) for c in classes]
            cells.append("**" + _fmt(stats["class_mean"].get(metric), metric) + "**")
            cells.append(_fmt(stats["object_mean"].get(metric), metric))
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Metrics on {settings['n_points']} surface samples per shape, normalised by the true "
        "shape's bounding box (longest side 1); Chamfer-L1 in those units (papers print it "
        "x10); F-score at 1% of the box. DVR meshes: MISE + marching cubes at "
        f"{settings['resolution']}^3. Retrieval: {settings['retrieval']}. Oracle: "
        f"{settings['oracle']}.",
    ]
    if "retrieval_same_class_rate" in settings:
        lines.append(
            f"The retrieved shape has the right class for "
            f"{100 * settings['retrieval_same_class_rate']:.0f}% of the objects."
        )
    n_empty = sum(s.get("empty", 0) for s in dvr["per_class"].values())
    if n_empty:
        lines.append(f"{n_empty} DVR reconstruction(s) were empty and scored as the worst case.")
    return "\n".join(lines) + "\n"


def _fmt(value: Optional[float], metric: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4f}" if metric == "chamfer_l1" else f"{value:.3f}"


def evaluate_category(
    checkpoint: str,
    out_dir: str,
    *,
    data_root: Optional[str] = None,
    split: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    resolution: Optional[int] = None,
    n_points: Optional[int] = None,
    input_view: Optional[int] = None,
    retrieval: bool = True,
    oracle: bool = True,
    oracle_points: int = 2048,
    max_objects_per_class: Optional[int] = None,
    figure_objects: int = 6,
    save_meshes: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """
    Score a single-view checkpoint on held-out objects against the retrieval baselines.

    Writes ``results.json`` (settings, per-object scores, per-class / class-mean / object-mean
    tables), ``results.md`` (the table) and ``figure.png`` (input | true view | DVR render |
    DVR normals | retrieved shape, for a few objects of each class) into ``out_dir``; with
    ``save_meshes`` also ``meshes/<class>_<object>.ply``.

    Args:
        checkpoint: a single-view checkpoint (``dvr fit --task single-view``).
        out_dir: the report folder.
        data_root: the category root (default: the checkpoint's ``data.path``).
        split: the split to evaluate (default: the config's ``data.test_split``).
        device: where to run.
        resolution: MISE resolution (default ``eval.mesh_resolution``).
        n_points: surface samples per shape (default ``eval.mesh_points``).
        input_view: the input view (default ``eval.input_view``, 0).
        retrieval: run the retrieval baseline.
        oracle: run the oracle retrieval.
        oracle_points: samples per shape for the oracle's nearest-shape search.
        max_objects_per_class: evaluate the first objects of each class only.
        figure_objects: objects in the figure.
        save_meshes: keep the reconstructed meshes.
        progress: show a progress bar.

    Returns:
        The report written to ``results.json``.
    """
    from tqdm.auto import tqdm

    from ..meshing import extract_mesh, save_mesh

    start_time = time.perf_counter()
    device = torch.device(device)
    model, config, state = model_from_checkpoint(checkpoint, device=device)
    root = data_root or config.data.path
    if not root:
        raise ValueError("No category root: pass --data (the checkpoint names none).")
    split = split or config.data.test_split
    resolution = resolution or config.eval.mesh_resolution
    n_points = n_points or config.eval.mesh_points
    input_view = config.eval.input_view if input_view is None else input_view
    image_size = tuple(state.get("image_size") or ())
    options = config.data.loader_options(
        depth="none", empty_masks="ignore", image_size=image_size or None
    )
    test = load_category(
        root, split, device=device, **dict(options, max_objects_per_class=max_objects_per_class)
    )
    train = None
    if retrieval or oracle:
        train = load_category(root, config.data.train_split, device=device, **options)
    make_dirs(out_dir)
    timing: dict[str, float] = {"load_seconds": time.perf_counter() - start_time}

    # Codes: the test inputs and every view of every training object.
    start = time.perf_counter()
    test_objects = torch.arange(len(test))
    input_views = test.view_index(test_objects, input_view)
    test_codes = encode_views(model, test, input_views, batch_size=128)
    train_codes = train_owner = None
    if retrieval and train is not None:
        train_views = torch.arange(int(train.view_offsets[-1]))
        train_codes = encode_views(model, train, train_views, batch_size=128)
        train_owner = torch.repeat_interleave(torch.arange(len(train)), train.n_views)
    timing["encode_seconds"] = time.perf_counter() - start

    # Training shapes (for retrieval and the oracle), sampled once.
    train_shapes: list[GroundTruth] = []
    train_small = None
    if train is not None:
        start = time.perf_counter()
        train_shapes = [train.ground_truth(i, device=device) for i in range(len(train))]
        if oracle:
            small = [shape_samples(s, oracle_points, seed=i)[0] for i, s in enumerate(train_shapes)]
            count = min(p.shape[0] for p in small)
            train_small = torch.stack([p[:count] for p in small])
        timing["train_shapes_seconds"] = time.perf_counter() - start

    rows: list[dict[str, Any]] = []
    meshes = {}
    mesh_seconds = score_seconds = 0.0
    bar = tqdm(total=len(test), desc=f"evaluate {split}", unit="obj", disable=not progress)
    for i in range(len(test)):
        obj = test.objects[i]
        gt = test.ground_truth(i, device=device)
        gt_samples = shape_samples(gt, n_points, seed=10_000 + i)
        row: dict[str, Any] = {"class": obj.class_name, "object": obj.object_id}
        start = time.perf_counter()
        extraction = extract_mesh(
            model.field,
            latent=test_codes[i : i + 1],
            resolution=resolution,
            start_resolution=min(32, resolution),
        )
        mesh_seconds += time.perf_counter() - start
        start = time.perf_counter()
        pred = extraction.mesh
        row["dvr"] = score_samples(shape_samples(pred, n_points, seed=i), gt_samples)
        row["dvr"]["faces"] = int(extraction.stats.n_faces)
        if save_meshes and not extraction.is_empty:
            make_dirs(os.path.join(out_dir, "meshes"))
            save_mesh(
                pred, os.path.join(out_dir, "meshes", f"{obj.class_name}_{obj.object_id}.ply")
            )
        meshes[i] = pred
        if train_codes is not None:
            distances = (train_codes - test_codes[i]).norm(dim=-1)
            nearest = int(distances.argmin())
            j = int(train_owner[nearest])
            row["retrieval"] = score_samples(
                shape_samples(train_shapes[j], n_points, seed=20_000 + j), gt_samples
            )
            row["retrieval"]["retrieved"] = (
                f"{train.objects[j].class_name}/{train.objects[j].object_id}"
            )
            row["retrieval"]["same_class"] = train.objects[j].class_name == obj.class_name
            row["retrieval"]["code_distance"] = float(distances[nearest])
            row["retrieval"]["index"] = j
        if train_small is not None:
            gt_small = shape_samples(gt, oracle_points, seed=30_000 + i)[0]
            count = min(gt_small.shape[0], train_small.shape[1])
            chamfer = evaluate_pointclouds(
                train_small[:, :count],
                gt_small[None, :count].expand(len(train_small), -1, -1).contiguous(),
                normalize="gt",
            )["chamfer_l1"]
            j = int(chamfer.argmin())
            row["oracle"] = score_samples(
                shape_samples(train_shapes[j], n_points, seed=20_000 + j), gt_samples
            )
            row["oracle"]["retrieved"] = (
                f"{train.objects[j].class_name}/{train.objects[j].object_id}"
            )
        score_seconds += time.perf_counter() - start
        rows.append(row)
        bar.update(1)
    bar.close()
    timing["mesh_seconds"] = mesh_seconds
    timing["score_seconds"] = score_seconds

    methods = ["dvr"] + (["retrieval"] if train_codes is not None else [])
    methods += ["oracle"] if train_small is not None else []
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "data": str(root),
        "split": split,
        "n_objects": len(test),
        "classes": list(test.classes),
        "class_names": dict(test.class_names),
        "settings": {
            "input_view": input_view,
            "resolution": resolution,
            "n_points": n_points,
            "f_score_threshold": 0.01,
            "normalisation": "true shape's bounding box, longest side 1",
            "retrieval": "nearest code of the trained encoder among all views of all "
            "training objects (Euclidean)",
            "oracle": "training shape nearest to the true test shape in Chamfer-L1 "
            f"({oracle_points} samples); uses the ground truth",
            "train_objects": 0 if train is None else len(train),
            "iterations": int(state.get("step", 0)),
            "encoder": state.get("encoder"),
            "supervision": config.train.supervision,
        },
        "methods": {m: aggregate(rows, m, test.classes) for m in methods},
        "objects": rows,
    }
    if "retrieval" in methods:
        report["settings"]["retrieval_same_class_rate"] = _mean(
            [float(r["retrieval"]["same_class"]) for r in rows]
        )
    start = time.perf_counter()
    try:
        figure = comparison_figure(
            model,
            test,
            test_codes,
            meshes,
            rows,
            train_shapes=train_shapes,
            n_objects=figure_objects,
            input_view=input_view,
            background=config.background,
            n_steps=config.eval.n_steps,
        )
        save_figure(figure, os.path.join(out_dir, "figure.png"))
        report["figure"] = "figure.png"
    except Exception as error:  # a figure must not cost the numbers
        report["figure_error"] = str(error)
    timing["figure_seconds"] = time.perf_counter() - start
    timing["total_seconds"] = time.perf_counter() - start_time
    report["timing"] = timing
    write_json(os.path.join(out_dir, "results.json"), report)
    with atomic_write(os.path.join(out_dir, "results.md"), "w") as handle:
        handle.write(results_markdown(report))
    return report


@torch.no_grad()
def comparison_figure(
    model,
    test: CategoryData,
    codes: torch.Tensor,
    meshes: dict,
    rows: Sequence[dict[str, Any]],
    *,
    train_shapes: Sequence[GroundTruth] = (),
    n_objects: int = 6,
    input_view: int = 0,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    n_steps: int = 64,
) -> dict[str, Any]:
    """
    The pictures of :func:`evaluate_category`'s figure: for a few objects (spread over the
    classes) the input view, the true image from another view, DVR's render and normals from
    that view, and the retrieved training shape rendered from it (when it is a mesh).

    Returns:
        ``{"rows": [[image, ...], ...], "columns": [titles], "labels": [row titles]}``.
    """
    from ..visualize import colorize_normals
    from .category import render_object

    chosen = spread_objects(test, n_objects)
    objects = torch.tensor(chosen)
    inputs = test.view_index(objects, input_view)
    counts = test.n_views[objects]
    targets = torch.where(
        counts > 1,
        test.view_index(objects, torch.remainder(input_view + counts // 2, counts)),
        inputs,
    )
    cameras = test.view_cameras(targets)
    rendered = render_with_codes(
        model.field,
        cameras,
        codes[objects.to(codes.device)],
        test.image_size,
        n_steps=n_steps,
        background=background,
        batch_size=8,
    )
    truth = test.float_images(targets).cpu()
    columns = ["input", "true (other view)", "DVR", "DVR normals"]
    has_retrieval = all("retrieval" in rows[i] for i in chosen) and len(train_shapes) > 0
    if has_retrieval:
        columns.append("retrieval")
    picture_rows, labels = [], []
    for k, i in enumerate(chosen):
        row = [
            test.float_images(inputs[k : k + 1]).cpu()[0],
            truth[k],
            rendered.images[k].clamp(0, 1),
            colorize_normals(rendered.normals[k], rendered.masks[k]),
        ]
        if has_retrieval:
            shape = train_shapes[rows[i]["retrieval"]["index"]]
            if shape.mesh is not None:
                mesh = shape.mesh
                if mesh.textures is None:  # an untextured ground truth: plain grey
                    from pytorch3d.renderer import TexturesVertex

                    verts = mesh.verts_padded()
                    mesh = mesh.clone()
                    mesh.textures = TexturesVertex(verts_features=torch.full_like(verts, 0.7))
                image = render_object(
                    mesh, cameras[[k]], supersample=2, background=background
                ).images[0]
            else:
                image = torch.ones_like(truth[k])
            row.append(image.cpu())
        picture_rows.append(row)
        labels.append(f"{rows[i]['class']}/{rows[i]['object']}")
    return {"rows": picture_rows, "columns": columns, "labels": labels}


def save_figure(figure: dict[str, Any], path: str, *, cell_inches: float = 1.6) -> None:
    """Draw :func:`comparison_figure`'s pictures as a titled grid PNG (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows, columns = figure["rows"], figure["columns"]
    fig, axes = plt.subplots(
        len(rows),
        len(columns),
        figsize=(cell_inches * len(columns), cell_inches * len(rows) + 0.3),
        squeeze=False,
    )
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            axis = axes[r][c]
            axis.imshow(image.detach().cpu().float().clamp(0, 1).numpy(), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(columns[c], fontsize=8)
            if c == 0:
                axis.set_ylabel(figure["labels"][r], fontsize=7)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
