"""Differentiable Volumetric Rendering (DVR) as a PyTorch3D renderer."""
