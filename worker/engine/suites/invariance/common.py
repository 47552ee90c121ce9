"""What the parts of the invariance suite get: one shard's inputs, and the finalize inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...samples import SampleSet
from ..base import SuiteContext

#: thumbnails in a partial are at most this many pixels on a side (average-pooled)
THUMBNAIL = 64


@dataclass(frozen=True)
class Shard:
    """One shard: the suite's context, its samples, the suite's validated parameters (a part reads
    its own object) and this part's progress (fraction done)."""

    ctx: SuiteContext
    samples: SampleSet
    params: dict[str, Any]
    progress: Callable[[float], None]


@dataclass(frozen=True)
class Final:
    """What a part's finalize gets besides its merged partial."""

    ctx: SuiteContext
    suite: str
    params: dict[str, Any]


def thumbnail(image: torch.Tensor, size: int = THUMBNAIL) -> list[list[list[float]]]:
    """A C x H x W image average-pooled to at most size x size, rounded: small enough for a partial.
    Pooling is linear, so the thumbnail of x + δ is the sum of the thumbnails."""
    img = image.detach().double().cpu()[None]
    h, w = img.shape[-2:]
    if h > size or w > size:
        img = torch.nn.functional.adaptive_avg_pool2d(img, (min(h, size), min(w, size)))
    return [[[round(float(v), 5) for v in row] for row in ch] for ch in img[0].tolist()]
