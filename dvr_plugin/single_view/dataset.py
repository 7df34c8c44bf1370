"""
Many objects in the reference DVR / Occupancy Networks ShapeNet layout, for single-view training.

Layout (what the reference's ShapeNet / NMR downloads hold, and what
:func:`dvr_plugin.single_view.category.make_category` writes)::

    ROOT/metadata.yaml                       optional: {class folder: {id, name}}
    ROOT/<class>/train.lst, val.lst, test.lst   object folder names, one per line
    ROOT/<class>/<object>/image/, mask/, cameras.npz       (read by load_dvr_layout)
    ROOT/<class>/<object>/depth/ or visual_hull_depth/     optional depth maps
    ROOT/<class>/<object>/mesh.ply | model.obj | pointcloud.npz   optional ground truth

Every object is read with :func:`dvr_plugin.data.load_dvr_layout` (cameras in the object
frame, depth converted to z-depth), and all views of a split are kept in memory: images as
uint8, masks as bool, depth (when used) as float32; about 28 KB per 64x64 view with depth.
That suits generated categories and subsets of ShapeNet (``max_objects_per_class``); the full
ShapeNet would need a streaming loader.

Depth (``depth``): ``"auto"`` takes ``depth/`` when the objects have it, else
``visual_hull_depth/``, else none; ``"depth"`` / ``"visual_hull"`` require that folder; ``"none"``
reads no depth. True depth can supervise the depth loss; visual-hull depth only places the
occupancy-loss points (the reference's ``depth_from_visual_hull``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from pytorch3d.renderer import PerspectiveCameras
from pytorch3d.structures import Meshes

from ..data import MultiViewData, index_cameras, load_dvr_layout
from ..data.cameras import cameras_from_opencv, opencv_from_cameras
from ..data.io import IMAGE_EXTENSIONS, list_files
from ..data.multiview import ImageStack

PathLike = Union[str, os.PathLike]
DEPTH_MODES = ("auto", "depth", "visual_hull", "none")
DEPTH_FOLDERS = {"depth": "depth", "visual_hull": "visual_hull_depth"}
GROUND_TRUTH_FILES = ("mesh.ply", "mesh.obj", "model.ply", "model.obj", "pointcloud.npz")


@dataclass
class CategoryObject:
    """
    One object of a split.

    Members:
        class_name: the class folder.
        object_id: the object folder (as listed in the split file).
        root: the object folder.
        n_views: views loaded.
    """

    class_name: str
    object_id: str
    root: Path
    n_views: int


@dataclass
class GroundTruth:
    """
    The true shape of an object: a mesh, or points with normals (``pointcloud.npz``).

    Members:
        mesh: a ``Meshes`` of one, or ``None``.
        points: `(P, 3)` surface points, or ``None``.
        normals: `(P, 3)` their normals, or ``None``.
        source: the file it came from.
    """

    mesh: Optional[Meshes] = None
    points: Optional[torch.Tensor] = None
    normals: Optional[torch.Tensor] = None
    source: str = ""


def read_metadata(root: Path) -> dict[str, str]:
    """``{class folder: display name}`` from ``metadata.yaml`` (``{}`` when absent)."""
    path = root / "metadata.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"Cannot read {path}: {error}") from error
    names = {}
    if isinstance(data, dict):
        for key, value in data.items():
            name = value.get("name") if isinstance(value, dict) else None
            names[str(key)] = str(name) if name and name != "n/a" else str(key)
    return names


def list_classes(root: PathLike, classes: Optional[Sequence[str]] = None) -> list[str]:
    """
    The class folders to use: ``classes`` (checked), or every sub-folder holding a ``.lst``.

    Raises:
        FileNotFoundError: a missing root or class folder, or no class folder with split lists.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Category data folder not found: {root}")
    if classes is not None:
        missing = [c for c in classes if not (root / c).is_dir()]
        if missing:
            raise FileNotFoundError(f"Class folder(s) {missing} not found in {root}.")
        return list(classes)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.lst")))
    if not found:
        raise FileNotFoundError(
            f"No class folders with split lists (train.lst, ...) in {root}; is this the root "
            "of a category (ROOT/<class>/<split>.lst)?"
        )
    return found


def read_split(
    root: PathLike,
    split: str,
    classes: Optional[Sequence[str]] = None,
    *,
    required: bool = True,
) -> list[tuple[str, str]]:
    """
    ``(class, object id)`` pairs of a split, in class then file order.

    Args:
        root: the category root.
        split: the split name (``ROOT/<class>/<split>.lst``).
        classes: class folders (default: all, see :func:`list_classes`).
        required: raise when a class lacks the split file or the split names no object;
            otherwise such a split is simply empty.

    Raises:
        FileNotFoundError: a missing split file or listed object folder (when ``required``).
        ValueError: when the split lists name no object at all (when ``required``).
    """
    root = Path(root)
    chosen = list_classes(root, classes)
    pairs: list[tuple[str, str]] = []
    for class_name in chosen:
        path = root / class_name / f"{split}.lst"
        if not path.is_file():
            if required:
                raise FileNotFoundError(f"Split list not found: {path}")
            continue
        for line in path.read_text().splitlines():
            name = line.strip()
            if name:
                pairs.append((class_name, name))
    if not pairs and required:
        raise ValueError(
            f"The split lists {split}.lst of classes {chosen} in {root} name no objects."
        )
    missing = [f"{c}/{o}" for c, o in pairs if not (root / c / o).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} object folder(s) listed in {split}.lst do not exist in {root}: "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    return pairs


def _depth_folder(folder: Path, mode: str) -> Optional[str]:
    if mode == "none":
        return None
    if mode == "auto":
        for kind in ("depth", "visual_hull"):
            if (folder / DEPTH_FOLDERS[kind]).is_dir():
                return DEPTH_FOLDERS[kind]
        return None
    name = DEPTH_FOLDERS[mode]
    if not (folder / name).is_dir():
        raise FileNotFoundError(f"data.depth={mode!r} but {folder / name} does not exist.")
    return name


def _stack_cameras(cameras: Sequence[PerspectiveCameras], image_size: tuple[int, int]):
    """One NDC ``PerspectiveCameras`` holding the cameras of several objects."""
    fields = {}
    for name in ("R", "T", "focal_length", "principal_point"):
        fields[name] = torch.cat(
            [getattr(c, name).expand(len(c), *getattr(c, name).shape[1:]) for c in cameras]
        )
    n = fields["R"].shape[0]
    return PerspectiveCameras(image_size=torch.tensor([list(image_size)] * n), **fields)


class CategoryData(ImageStack):
    """
    All views of the objects of one split, in memory.

    Views of all objects are stacked: object ``i`` owns the flat views
    ``view_offsets[i] .. view_offsets[i + 1] - 1`` (its views in file order, so its view ``k``
    is ``view_offsets[i] + k``).

    Args (keyword-only):
        objects: the :class:`CategoryObject` list.
        images: `(V, H, W, 3)` uint8.
        masks: `(V, H, W)` bool.
        cameras: ``V`` NDC ``PerspectiveCameras`` (object frame of each object).
        depths: `(V, H, W)` float z-depth (0 = unknown) or ``None``.
        depth_kind: ``"depth"``, ``"visual_hull"`` or ``None``.
        classes: the class folders (``object_class`` indexes it).
        class_names: display names of the classes.
        root: the category root.
        split: the split name.

    Attributes:
        view_offsets: `(N + 1,)` long, on the CPU.
        object_class: `(N,)` long class index of each object, on the CPU.
    """

    def __init__(
        self,
        *,
        objects: Sequence[CategoryObject],
        images: torch.Tensor,
        masks: torch.Tensor,
        cameras: PerspectiveCameras,
        depths: Optional[torch.Tensor] = None,
        depth_kind: Optional[str] = None,
        classes: Sequence[str],
        class_names: Optional[dict[str, str]] = None,
        root: Optional[PathLike] = None,
        split: str = "",
    ) -> None:
        if not objects:
            raise ValueError("CategoryData needs at least one object.")
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 (V, H, W, 3), got {images.dtype} {tuple(images.shape)}."
            )
        n_views = [o.n_views for o in objects]
        total = sum(n_views)
        if images.shape[0] != total or masks.shape != images.shape[:3] or len(cameras) != total:
            raise ValueError(
                f"{len(objects)} objects with {total} views in all, but images "
                f"{tuple(images.shape)}, masks {tuple(masks.shape)}, {len(cameras)} cameras."
            )
        if depths is not None and depths.shape != masks.shape:
            raise ValueError(
                f"depths must have shape {tuple(masks.shape)}, got {tuple(depths.shape)}."
            )
        self.objects = list(objects)
        self.images = images
        self.masks = masks.bool()
        self.depths = depths
        self.depth_kind = depth_kind if depths is not None else None
        self.cameras = cameras
        self.classes = list(classes)
        self.class_names = {c: (class_names or {}).get(c, c) for c in self.classes}
        self.root = None if root is None else Path(root)
        self.split = split
        self.view_offsets = torch.tensor([0, *np.cumsum(n_views).tolist()], dtype=torch.long)
        self.object_class = torch.tensor(
            [self.classes.index(o.class_name) for o in self.objects], dtype=torch.long
        )

    def __len__(self) -> int:
        return len(self.objects)

    def __repr__(self) -> str:
        height, width = self.image_size
        return (
            f"CategoryData({self.split or '?'}: {len(self)} objects, {self.images.shape[0]} views, "
            f"{height}x{width}, classes {self.classes}, depth {self.depth_kind}, "
            f"device={self.device})"
        )

    @property
    def n_views(self) -> torch.Tensor:
        """`(N,)` long, views per object (CPU)."""
        return self.view_offsets[1:] - self.view_offsets[:-1]

    @property
    def has_true_depth(self) -> bool:
        """Whether the depth maps are true depth (they can supervise the depth loss)."""
        return self.depths is not None and self.depth_kind == "depth"

    def view_index(self, objects: torch.Tensor, views: Union[int, torch.Tensor]) -> torch.Tensor:
        """
        Flat view indices of view ``views`` (an int or `(B,)`) of ``objects`` `(B,)` (CPU);
        negative views count from each object's last view.
        """
        objects = torch.as_tensor(objects, dtype=torch.long).cpu()
        counts = self.n_views[objects]
        views = torch.as_tensor(views, dtype=torch.long).cpu().expand_as(objects)
        if bool(((views >= counts) | (views < -counts)).any()):
            raise ValueError(
                f"View index out of range: views {views.tolist()} for objects with "
                f"{counts.tolist()} views."
            )
        return self.view_offsets[objects] + views % counts

    def random_views(
        self, objects: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """`(B,)` flat indices of one uniformly random view of each of ``objects`` (CPU)."""
        objects = torch.as_tensor(objects, dtype=torch.long).cpu()
        u = torch.rand(objects.shape, generator=generator)
        local = (u * self.n_views[objects]).long().clamp_max(self.n_views[objects] - 1)
        return self.view_offsets[objects] + local

    def float_images(self, views: torch.Tensor) -> torch.Tensor:
        """`(B, H, W, 3)` float images in [0, 1] of flat views `(B,)`."""
        return self.images[views.to(self.device)].float() / 255.0

    def view_cameras(self, views: torch.Tensor) -> PerspectiveCameras:
        """The cameras of flat views `(B,)`."""
        return index_cameras(self.cameras, torch.as_tensor(views, dtype=torch.long).cpu())

    def object_views(self, index: int) -> MultiViewData:
        """Every view of object ``index`` as :class:`MultiViewData`."""
        start, stop = int(self.view_offsets[index]), int(self.view_offsets[index + 1])
        views = torch.arange(start, stop)
        return MultiViewData(
            images=self.float_images(views),
            masks=self.masks[views.to(self.device)],
            depths=None if self.depths is None else self.depths[views.to(self.device)],
            cameras=self.view_cameras(views),
            names=[f"{i:04d}" for i in range(stop - start)],
            info={"format": "dvr", "root": str(self.objects[index].root)},
        )

    def class_of(self, index: int) -> str:
        """The class folder of object ``index``."""
        return self.objects[index].class_name

    def to(self, device: Union[str, torch.device]) -> CategoryData:
        """A copy with images, masks, depths and cameras on ``device``."""
        return CategoryData(
            objects=self.objects,
            images=self.images.to(device),
            masks=self.masks.to(device),
            # A copy: PyTorch3D's cameras.to() moves the object itself.
            cameras=index_cameras(self.cameras, torch.arange(len(self.cameras))).to(device),
            depths=None if self.depths is None else self.depths.to(device),
            depth_kind=self.depth_kind,
            classes=self.classes,
            class_names=self.class_names,
            root=self.root,
            split=self.split,
        )

    def ground_truth(self, index: int, *, device: Union[str, torch.device] = "cpu") -> GroundTruth:
        """The true shape of object ``index`` (see :func:`load_ground_truth`)."""
        return load_ground_truth(self.objects[index].root, device=device)


def load_ground_truth(folder: PathLike, *, device: Union[str, torch.device] = "cpu") -> GroundTruth:
    """
    The true shape stored in an object folder: the first of :data:`GROUND_TRUTH_FILES`.

    ``pointcloud.npz`` (Occupancy Networks) holds ``points`` and ``normals`` in the object frame.

    Raises:
        FileNotFoundError: when the folder holds none of them.
        ValueError: when the file cannot be read.
    """
    folder = Path(folder)
    for name in GROUND_TRUTH_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".npz"):
            try:
                with np.load(path) as archive:
                    points = torch.from_numpy(np.asarray(archive["points"], dtype=np.float32))
                    normals = None
                    if "normals" in archive.files:
                        normals = torch.from_numpy(np.asarray(archive["normals"], dtype=np.float32))
            except Exception as error:
                raise ValueError(f"Cannot read the point cloud {path}: {error}") from error
            if points.dim() != 2 or points.shape[-1] != 3 or points.shape[0] == 0:
                raise ValueError(
                    f"{path} must hold points of shape (P, 3), got {tuple(points.shape)}."
                )
            return GroundTruth(
                points=points.to(device),
                normals=None if normals is None else normals.to(device),
                source=str(path),
            )
        from ..meshing import load_mesh

        try:
            mesh = load_mesh(path, device=str(device))
        except Exception as error:
            raise ValueError(f"Cannot read the mesh {path}: {error}") from error
        if mesh.isempty():
            raise ValueError(f"The ground-truth mesh {path} has no faces.")
        return GroundTruth(mesh=mesh, source=str(path))
    raise FileNotFoundError(
        f"No ground-truth shape in {folder} (looked for {', '.join(GROUND_TRUTH_FILES)})."
    )


def load_category(
    root: PathLike,
    split: str = "train",
    *,
    classes: Optional[Sequence[str]] = None,
    depth: str = "auto",
    max_objects_per_class: Optional[int] = None,
    max_views: Optional[int] = None,
    image_size: Optional[Sequence[int]] = None,
    empty_masks: str = "warn",
    required: bool = True,
    workers: int = 4,
    device: Union[str, torch.device] = "cpu",
) -> Optional[CategoryData]:
    """
    Load every object of a split (module docstring for the layout).

    Args:
        root: the category root.
        split: ``"train"``, ``"val"``, ``"test"`` or any ``<split>.lst`` name.
        classes: class folders to use (default: every one with split lists).
        depth: ``"auto"``, ``"depth"``, ``"visual_hull"`` or ``"none"``.
        max_objects_per_class: keep the first objects of each class only.
        max_views: load the first views of each object only.
        image_size: ``(H, W)`` every image must have (e.g. that of the training split).
        empty_masks: views with an empty mask: ``"error"``, ``"warn"`` or ``"ignore"``.
        required: see :func:`read_split`; when false a missing / empty split returns ``None``.
        workers: threads reading objects.
        device: where the tensors go.

    Returns:
        :class:`CategoryData` (or ``None`` for an absent optional split).

    Raises:
        FileNotFoundError: missing folders, split lists or files.
        ValueError: empty split lists, images of different sizes, objects that disagree on
            depth, unreadable files.
    """
    if depth not in DEPTH_MODES:
        raise ValueError(f"depth must be one of {DEPTH_MODES}, got {depth!r}.")
    if max_objects_per_class is not None and max_objects_per_class < 1:
        raise ValueError(f"max_objects_per_class must be >= 1, got {max_objects_per_class}.")
    if max_views is not None and max_views < 1:
        raise ValueError(f"max_views must be >= 1, got {max_views}.")
    root = Path(root)
    chosen = list_classes(root, classes)
    pairs = read_split(root, split, chosen, required=required)
    if not pairs:
        return None
    if max_objects_per_class is not None:
        kept: dict[str, int] = {}
        limited = []
        for class_name, object_id in pairs:
            kept[class_name] = kept.get(class_name, 0) + 1
            if kept[class_name] <= max_objects_per_class:
                limited.append((class_name, object_id))
        pairs = limited
    folders = [root / c / o for c, o in pairs]
    depth_dir = _depth_folder(folders[0], depth)

    def read(folder: Path) -> MultiViewData:
        views = None
        if max_views is not None and (folder / "image").is_dir():
            count = len(list_files(folder / "image", IMAGE_EXTENSIONS))
            views = list(range(min(count, max_views)))
        if depth_dir is not None and not (folder / depth_dir).is_dir():
            raise FileNotFoundError(
                f"{folder} has no {depth_dir}/ folder but {folders[0].name} has one; every "
                "object needs the same depth maps (or set data.depth=none)."
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = load_dvr_layout(
                folder, depth_dir=depth_dir, views=views, empty_masks=empty_masks
            )
        for warning in caught:
            warnings.warn(f"{folder.parent.name}/{folder.name}: {warning.message}", stacklevel=3)
        return data

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        loaded = list(pool.map(read, folders))

    size = tuple(int(s) for s in image_size) if image_size is not None else loaded[0].image_size
    for folder, data in zip(folders, loaded, strict=True):
        if data.image_size != size:
            raise ValueError(
                f"Images of {folder.parent.name}/{folder.name} are {data.image_size[0]}x"
                f"{data.image_size[1]} but {size[0]}x{size[1]} are expected; every object of a "
                "category (and every split) must share one image size."
            )
    objects = [
        CategoryObject(class_name=c, object_id=o, root=f, n_views=len(d))
        for (c, o), f, d in zip(pairs, folders, loaded, strict=True)
    ]
    images = torch.cat([(d.images * 255.0).round().to(torch.uint8) for d in loaded])
    masks = torch.cat([d.masks for d in loaded])
    depths = None
    if depth_dir is not None:
        depths = torch.cat([d.depths for d in loaded])
    # Every object's cameras are already NDC PerspectiveCameras; convert through OpenCV once
    # more only when they are not (kept general for other loaders).
    cameras = _stack_cameras([_as_perspective(d) for d in loaded], size)
    kind = None
    if depth_dir is not None:
        kind = "depth" if depth_dir == DEPTH_FOLDERS["depth"] else "visual_hull"
    data = CategoryData(
        objects=objects,
        images=images,
        masks=masks,
        cameras=cameras,
        depths=depths,
        depth_kind=kind,
        classes=sorted({c for c, _ in pairs}, key=chosen.index),
        class_names=read_metadata(root),
        root=root,
        split=split,
    )
    return data.to(device)


def _as_perspective(data: MultiViewData) -> PerspectiveCameras:
    cameras = data.cameras
    if isinstance(cameras, PerspectiveCameras) and cameras.in_ndc():
        return cameras
    R, t, K = opencv_from_cameras(cameras, image_size=data.image_size)
    return cameras_from_opencv(R, t, K, data.image_size)


def dataset_summary(data: CategoryData) -> dict[str, Any]:
    """Counts for reports: objects per class, views, image size, depth."""
    per_class = {c: int((data.object_class == i).sum()) for i, c in enumerate(data.classes)}
    return {
        "split": data.split,
        "objects": len(data),
        "objects_per_class": per_class,
        "views": int(data.images.shape[0]),
        "image_size": list(data.image_size),
        "depth": data.depth_kind,
        "root": None if data.root is None else str(data.root),
    }
