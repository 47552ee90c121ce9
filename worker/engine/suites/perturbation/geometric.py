"""Geometric transforms: a grid of rotations x translations (worst case per sample), and scales.

All transforms are one affine resampling (bilinear) of the model-size image about its centre;
what falls outside the image is filled per ``padding`` (zeros: black, border: edge colour,
reflection: mirrored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F

from ..keys import metric_key


class Padding(StrEnum):
    ZEROS = "zeros"
    BORDER = "border"
    REFLECTION = "reflection"


@dataclass(frozen=True)
class Transform:
    """Rotation (degrees, counter-clockwise), translation (pixels, +x right, +y down), scale."""

    angle: float = 0.0
    tx: float = 0.0
    ty: float = 0.0
    scale: float = 1.0

    @property
    def key(self) -> str:
        """A metric-path-safe name, e.g. ``rot_m30_tx_3_ty_0`` or ``scale_0p8``."""
        if self.angle == 0 and self.tx == 0 and self.ty == 0 and self.scale != 1:
            return metric_key("scale", self.scale)
        return "_".join((metric_key("rot", self.angle), metric_key("tx", self.tx), metric_key("ty", self.ty)))


def grid(rotations: list[float], translations: list[float]) -> list[Transform]:
    """Every rotation with every (tx, ty) translation pair."""
    return [Transform(angle=a, tx=tx, ty=ty) for a in rotations for tx in translations for ty in translations]


def apply(images: torch.Tensor, t: Transform, padding: Padding = Padding.ZEROS) -> torch.Tensor:
    """The transformed images (N x C x H x W), same size, about the image centre."""
    n, _, h, w = images.shape
    a = math.radians(t.angle)
    cos, sin = math.cos(a) / t.scale, math.sin(a) / t.scale
    # affine_grid maps output coordinates (normalised to [-1, 1]) to input coordinates: the
    # inverse transform. Pixel aspect is corrected so that rotations stay rigid on non-square images.
    theta = torch.tensor([[cos, -sin * h / w, -2 * t.tx / w * cos + 2 * t.ty / h * sin * h / w],
                          [sin * w / h, cos, -2 * t.tx / w * sin * w / h - 2 * t.ty / h * cos]],
                         dtype=images.dtype, device=images.device)
    theta = theta.unsqueeze(0).expand(n, 2, 3)
    grid_ = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid_, mode="bilinear", padding_mode=padding.value, align_corners=False)
