"""
The single-view model: an image encoder and a field conditioned on its code.

``model.encode(images)`` gives `(B, C)` codes; ``model.field`` is a
:class:`dvr_plugin.fields.field.OccupancyTextureField` with ``latent_size = C`` (the code is
projected and added before every residual block), rendered with
:class:`dvr_plugin.renderer.DVRRenderer` (``renderer(cameras, latent=codes)``) and meshed with
:func:`dvr_plugin.meshing.extract_mesh` (``extract_mesh(model.field, latent=code)``). Gradients
of an image loss reach the encoder through DVR's implicit depth gradient, which includes the
latent code.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..fields.field import FieldOutput, OccupancyTextureField
from .encoder import ResNetEncoder, describe_encoder


class SingleViewModel(nn.Module):
    """
    Encoder + conditioned field.

    Args (keyword-only):
        encoder: maps `(B, H, W, 3)` images to `(B, C)` codes (e.g. :class:`ResNetEncoder`).
        field: a field with ``latent_size == C`` (e.g. :class:`OccupancyTextureField`).
    """

    def __init__(self, *, encoder: nn.Module, field: OccupancyTextureField) -> None:
        super().__init__()
        latent = getattr(encoder, "latent_size", None)
        if latent is not None and getattr(field, "latent_size", latent) != latent:
            raise ValueError(
                f"The encoder makes codes of size {latent} but the field expects "
                f"{field.latent_size}."
            )
        self.encoder = encoder
        self.field = field

    @property
    def latent_size(self) -> int:
        return int(self.field.latent_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, H, W, 3)` images in [0, 1] -> `(B, C)` codes."""
        return self.encoder(images)

    def forward(self, points: torch.Tensor, images: torch.Tensor) -> FieldOutput:
        """
        Field values at points for the objects shown in ``images``.

        Args:
            points: `(B, P, 3)` points in the object frame.
            images: `(B, H, W, 3)` input images.

        Returns:
            FieldOutput with ``values`` `(B, P)` (occupancy logits) and ``rgb`` `(B, P, 3)`.
        """
        return self.field(points, self.encode(images))


def build_model(config: Any, *, load_weights: bool = True) -> SingleViewModel:
    """
    The model of a :class:`~dvr_plugin.single_view.config.SingleViewConfig` (initialised from
    the global torch RNG).

    Args:
        config: the configuration.
        load_weights: load ``encoder.weights`` when set (and log the random-initialisation
            notice when not); ``False`` builds the bare architecture, e.g. to load a checkpoint.
    """
    encoder = ResNetEncoder(
        latent_size=config.encoder.latent_size,
        weights=config.encoder.weights if load_weights else None,
        backbone=config.encoder.backbone,
        normalize=config.encoder.normalize,
        input_size=config.encoder.input_size,
        warn_random_init=load_weights,
    )
    field = OccupancyTextureField(
        hidden_size=config.model.hidden_size,
        n_blocks=config.model.n_blocks,
        latent_size=config.encoder.latent_size,
        n_frequencies=config.model.n_frequencies,
    )
    return SingleViewModel(encoder=encoder, field=field)


def describe_model(model: SingleViewModel) -> dict[str, Any]:
    """Sizes and encoder facts for reports."""
    encoder: Optional[dict[str, Any]] = None
    if isinstance(model.encoder, ResNetEncoder):
        encoder = describe_encoder(model.encoder)
    return {
        "encoder": encoder,
        "field_parameters": sum(p.numel() for p in model.field.parameters()),
        "latent_size": model.latent_size,
    }
