"""
The image encoder of single-view reconstruction: a ResNet-18 that maps an image to a latent code.

As in DVR's single-view model, the ResNet-18 trunk (everything up to the global average pool,
512 features) is followed by one ``Linear(512 -> C)`` layer (``C = 256`` by default); the code
conditions :class:`dvr_plugin.fields.field.OccupancyTextureField` (added before every block).

The trunk is torchvision's ``resnet18`` when torchvision imports, otherwise an identical
definition in this module (:class:`ResNet18Trunk`, the same layers under the same parameter
names), so a torchvision state dict loads into either.

Pretrained weights are never downloaded. ``weights=PATH`` loads a local file holding a
torchvision ResNet-18 state dict (for example ``resnet18-f37072fd.pth`` of the ImageNet
weights, copied by hand); without it the trunk starts from random initialisation and a
warning says so (logger ``dvr_plugin.single_view``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._optional import importable

logger = logging.getLogger("dvr_plugin.single_view")

TRUNK_FEATURES = 512
BACKBONES = ("auto", "torchvision", "builtin")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_NOTICE = (
    "encoder.weights is not set: the ResNet-18 encoder starts from random initialisation "
    "(pretrained weights are never downloaded). Pass encoder.weights=PATH to a local "
    "torchvision resnet18 state dict (e.g. resnet18-f37072fd.pth) to start from ImageNet."
)


class _BasicBlock(nn.Module):
    """ResNet's basic block (two 3x3 convolutions), laid out as torchvision's ``BasicBlock``."""

    def __init__(self, *, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Trunk(nn.Module):
    """
    ResNet-18 without its classifier: `(B, 3, H, W)` -> `(B, 512)` (global average pool).

    The layers and parameter names are those of ``torchvision.models.resnet18`` (``conv1``,
    ``bn1``, ``layer1`` ... ``layer4`` with ``downsample.0`` / ``downsample.1``), and ``fc`` is an
    identity, so torchvision state dicts (without ``fc.*``) load unchanged. Used when
    torchvision is not importable.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        layers = []
        in_channels = 64
        for channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(
                nn.Sequential(
                    _BasicBlock(in_channels=in_channels, channels=channels, stride=stride),
                    _BasicBlock(in_channels=channels, channels=channels, stride=1),
                )
            )
            in_channels = channels
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def torchvision_available() -> bool:
    """Whether ``torchvision.models.resnet18`` imports."""
    return importable("torchvision.models")


def build_resnet18_trunk(backbone: str = "auto") -> tuple[nn.Module, str]:
    """
    A randomly initialised ResNet-18 trunk (`(B, 3, H, W)` -> `(B, 512)`).

    Args:
        backbone: ``"torchvision"``, ``"builtin"`` (:class:`ResNet18Trunk`) or ``"auto"``
            (torchvision when it imports, else the built-in one).

    Returns:
        ``(trunk, name)`` with the name of the implementation used.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}.")
    if backbone == "auto":
        backbone = "torchvision" if torchvision_available() else "builtin"
    if backbone == "builtin":
        return ResNet18Trunk(), "builtin"
    try:
        from torchvision.models import resnet18
    except Exception as error:  # any unpickling failure means a bad file
        raise ValueError(
            f"backbone='torchvision' needs torchvision ({error}); use backbone='builtin'."
        ) from error
    trunk = resnet18(weights=None)
    trunk.fc = nn.Identity()
    return trunk, "torchvision"


def read_resnet18_weights(path: str) -> dict[str, torch.Tensor]:
    """
    Read a ResNet-18 state dict from a local file, ready for the trunk.

    Accepts a plain state dict or a dict holding one under ``"state_dict"`` or ``"model"``;
    ``module.`` prefixes (DataParallel) are removed and the classifier (``fc.*``) is dropped.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it cannot be read or holds no ResNet-18 state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Encoder weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"Cannot read the encoder weights {path}: {error}") from error
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{path} does not hold a state dict of tensors.")
    out = {}
    for key, value in state.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if not key.startswith("fc."):
            out[key] = value
    return out


def load_trunk_weights(trunk: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a ResNet-18 state dict (no ``fc``) into a trunk; ``ValueError`` if it does not fit."""
    expected = {k for k in trunk.state_dict() if not k.startswith("fc.")}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source} is not a ResNet-18 state dict: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}."
        )
    try:
        trunk.load_state_dict(dict(state), strict=False)
    except RuntimeError as error:
        raise ValueError(f"{source} does not fit ResNet-18: {error}") from error


class ResNetEncoder(nn.Module):
    """
    ResNet-18 image encoder: images -> latent codes (DVR's single-view encoder).

    ``latent = fc(trunk(normalise(images)))`` with ``fc = Linear(512 -> latent_size)``. Images
    are channels-last floats in [0, 1] like PyTorch3D renders; they are resized to
    ``input_size`` when it is set (bilinear) and normalised with the ImageNet mean and standard
    deviation when ``normalize`` is true (what pretrained weights expect).

    The trunk has batch normalisation: in training mode a batch needs at least two images when
    the last feature map is 1x1 (inputs of 32x32 pixels or less).

    Args (keyword-only):
        latent_size: C, the size of the code (256 in the paper).
        weights: a local file with a torchvision ResNet-18 state dict to start from, or
            ``None`` for random initialisation (a warning is logged).
        backbone: ``"auto"``, ``"torchvision"`` or ``"builtin"`` (see
            :func:`build_resnet18_trunk`).
        normalize: apply the ImageNet normalisation.
        input_size: resize inputs to ``input_size x input_size`` pixels (0 keeps their size;
            ResNet-18 needs at least 32x32 to keep a spatial extent at its last stage).
        warn_random_init: log the random-initialisation notice when ``weights`` is ``None``.

    Attributes:
        pretrained: whether weights were loaded from a file.
        backbone_name: ``"torchvision"`` or ``"builtin"``.
    """

    def __init__(
        self,
        *,
        latent_size: int = 256,
        weights: Optional[str] = None,
        backbone: str = "auto",
        normalize: bool = True,
        input_size: int = 0,
        warn_random_init: bool = True,
    ) -> None:
        super().__init__()
        if latent_size < 1:
            raise ValueError(f"latent_size must be >= 1, got {latent_size}.")
        if input_size < 0:
            raise ValueError(f"input_size must be >= 0 (0 = keep), got {input_size}.")
        self.latent_size = latent_size
        self.normalize = normalize
        self.input_size = input_size
        self.features, self.backbone_name = build_resnet18_trunk(backbone)
        self.fc = nn.Linear(TRUNK_FEATURES, latent_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.pretrained = weights is not None
        if weights is not None:
            load_trunk_weights(self.features, read_resnet18_weights(weights), str(weights))
            logger.info("Encoder: ResNet-18 weights loaded from %s.", weights)
        elif warn_random_init:
            logger.warning(RANDOM_INIT_NOTICE)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """
        Args:
            images: `(B, H, W, 3)` floats in [0, 1].

        Returns:
            `(B, latent_size)` codes.
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"images must have shape (B, H, W, 3), got {shape}.")
        if not images.is_floating_point():
            raise ValueError(f"images must be floats in [0, 1], got dtype {images.dtype}.")
        x = images.permute(0, 3, 1, 2).to(self.fc.weight.dtype)
        if self.input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        if self.normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.fc(self.features(x.contiguous()))

    def extra_repr(self) -> str:
        return (
            f"latent_size={self.latent_size}, backbone={self.backbone_name}, "
            f"pretrained={self.pretrained}, input_size={self.input_size}"
        )


def describe_encoder(encoder: ResNetEncoder) -> dict[str, Any]:
    """Facts about an encoder for reports: backbone, weights, sizes."""
    return {
        "architecture": "resnet18",
        "backbone": encoder.backbone_name,
        "pretrained": encoder.pretrained,
        "latent_size": encoder.latent_size,
        "input_size": encoder.input_size or "native",
        "parameters": sum(p.numel() for p in encoder.parameters()),
    }
