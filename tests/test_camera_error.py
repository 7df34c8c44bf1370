"""The pose-error script of the camera-refinement runs (integration/gpu_runs/camera_error.py)."""

import math

import pytest
import torch
from pytorch3d.transforms import axis_angle_to_matrix

from integration.gpu_runs.camera_error import _angles, _centres, camera_errors


def test_angles_and_centres_of_known_poses():
    torch.manual_seed(0)
    R = axis_angle_to_matrix(torch.randn(4, 3, dtype=torch.float64))
    axes = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    turned = R @ axis_angle_to_matrix(axes * math.radians(0.7))
    torch.testing.assert_close(_angles(R, turned), torch.full((4,), 0.7, dtype=torch.float64))
    centres = torch.randn(4, 3, dtype=torch.float64)
    T = -(centres[:, None, :] @ R)[:, 0]  # X_view = X R + T is zero at the centre
    torch.testing.assert_close(_centres(R, T), centres)


def test_a_scene_without_exact_cameras_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cameras_exact.npz"):
        camera_errors(str(tmp_path / "checkpoint.pt"), str(tmp_path))
