"""
How far a fit's training cameras are from the exact ones, on a scene made with
``dvr make-scene --pose-noise`` (which keeps the exact poses in ``cameras_exact.npz``).

    python -m integration.gpu_runs.camera_error RUN/checkpoint.pt SCENE_DIR [--out errors.json]

For every training view: the angle between the fit's rotation (the data's camera, with the
learnt correction of ``train.refine_cameras`` when the checkpoint has one) and the exact one,
and the distance between the two camera centres. Frame: the fitting (normalised) frame of the
data, which both camera sets share (the same ``scale_mat``); distances are also given in the
data's world units (times the frame's scale). Angles in degrees.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any, Optional

import torch

from dvr_plugin.data.dtu_like import EXACT_CAMERAS_FILE
from dvr_plugin.data.frame import WorldFrame
from dvr_plugin.training.camera_refinement import CameraRefinement
from dvr_plugin.training.config import FitConfig
from dvr_plugin.training.data import load_fit_data


def _centres(R: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """`(N, 3)` camera centres of PyTorch3D cameras (``X_view = X R + T``)."""
    return -(T[:, None, :] @ R.transpose(1, 2))[:, 0]


def _angles(R_a: torch.Tensor, R_b: torch.Tensor) -> torch.Tensor:
    """`(N,)` degrees of the rotation taking ``R_a`` to ``R_b``."""
    cosine = ((R_a.transpose(1, 2) @ R_b).diagonal(dim1=1, dim2=2).sum(-1) - 1.0) / 2.0
    return torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0)))


def camera_errors(checkpoint: str, scene_dir: str) -> dict[str, Any]:
    """
    Args:
        checkpoint: a ``dvr fit`` checkpoint of the scene (its config names the data).
        scene_dir: the scene folder holding ``cameras_exact.npz``.

    Returns:
        Mean / max rotation error (degrees) and centre error (fitting-frame and world units),
        before and after the learnt correction (``after`` equals ``before`` without one).
    """
    exact_file = os.path.join(scene_dir, EXACT_CAMERAS_FILE)
    if not os.path.isfile(exact_file):
        raise ValueError(f"{scene_dir} has no {EXACT_CAMERAS_FILE} (made without --pose-noise?).")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if "config" not in state:
        raise ValueError(f"{checkpoint} is not a dvr fit checkpoint (no 'config' entry).")
    config = FitConfig.from_dict(state["config"])
    background = list(config.background)
    data = load_fit_data(config.data, background=background)
    with tempfile.TemporaryDirectory(prefix="exact_cameras_") as folder:
        for name in os.listdir(scene_dir):  # the same views, the exact cameras
            if name.startswith("cameras"):
                continue
            os.symlink(os.path.abspath(os.path.join(scene_dir, name)), os.path.join(folder, name))
        for name in ("cameras.npz", "cameras_sphere.npz"):
            shutil.copyfile(exact_file, os.path.join(folder, name))
        exact_config = dataclasses.replace(config.data, path=folder)
        exact = load_fit_data(exact_config, background=background)
    noisy, truth = data.train.cameras, exact.train.cameras
    refined = noisy
    correction = state.get("camera_refinement")
    if correction is not None:
        module = CameraRefinement(n_views=len(data.train))
        module.load_state_dict(correction)
        with torch.no_grad():
            refined = module(noisy, torch.arange(len(data.train)))
    scale = WorldFrame.from_views(data.train, config.data.format).scale
    report: dict[str, Any] = {
        "views": len(data.train),
        "refined": correction is not None,
        "frame": "fitting frame of the data (both camera sets share its scale_mat)",
    }
    for label, cameras in (("before", noisy), ("after", refined)):
        angles = _angles(cameras.R.double(), truth.R.double())
        shifts = (
            _centres(cameras.R.double(), cameras.T.double())
            - _centres(truth.R.double(), truth.T.double())
        ).norm(dim=-1)
        report[label] = {
            "rotation_deg_mean": float(angles.mean()),
            "rotation_deg_max": float(angles.max()),
            "centre_mean": float(shifts.mean()),
            "centre_max": float(shifts.max()),
            "centre_mean_world": float(shifts.mean()) * scale,
        }
    return report


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    parser.add_argument("checkpoint")
    parser.add_argument("scene_dir")
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    report = camera_errors(args.checkpoint, args.scene_dir)
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
