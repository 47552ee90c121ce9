"""Binary perturbation masks for regional attacks (Ozbulak et al. 2020), shared across channels.

Each shape is built at a requested share of the image's pixels, as close as the pixel grid
allows; the caller reports the actual share (:func:`fraction`).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch

from ..errors import SpecError


class MaskShape(str, Enum):
    """Where the perturbation may go."""

    SQUARE = "square"  # a centred square
    BORDER = "border"  # a frame along the image edges
    RANDOM = "random"  # a seeded random set of pixels


def _closest(candidates: range, count: Callable[[int], int], target: float) -> int:
    """The candidate whose pixel count is closest to ``target`` (the smaller one on ties)."""
    return min(candidates, key=lambda k: (abs(count(k) - target), k))


def _square(h: int, w: int, fraction: float, generator: torch.Generator | None) -> torch.Tensor:
    side = _closest(range(0, min(h, w) + 1), lambda s: s * s, fraction * h * w)
    m = torch.zeros(h, w, dtype=torch.bool)
    top, left = (h - side) // 2, (w - side) // 2
    m[top:top + side, left:left + side] = True
    return m


def _border(h: int, w: int, fraction: float, generator: torch.Generator | None) -> torch.Tensor:
    def count(b: int) -> int:
        return h * w - max(0, h - 2 * b) * max(0, w - 2 * b)

    width = _closest(range(0, (min(h, w) + 1) // 2 + 1), count, fraction * h * w)
    m = torch.ones(h, w, dtype=torch.bool)
    if h - 2 * width > 0 and w - 2 * width > 0:
        m[width:h - width, width:w - width] = False
    return m if width else torch.zeros(h, w, dtype=torch.bool)


def _random(h: int, w: int, fraction: float, generator: torch.Generator | None) -> torch.Tensor:
    k = round(fraction * h * w)
    m = torch.zeros(h * w, dtype=torch.bool)
    m[torch.randperm(h * w, generator=generator)[:k]] = True
    return m.view(h, w)


BUILDERS: dict[MaskShape, Callable[[int, int, float, torch.Generator | None], torch.Tensor]] = {
    MaskShape.SQUARE: _square,
    MaskShape.BORDER: _border,
    MaskShape.RANDOM: _random,
}


def make_mask(shape: MaskShape | str, *, height: int, width: int, fraction: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool H x W mask covering about ``fraction`` of the pixels.

    Raises:
        SpecError: the fraction is outside (0, 1], or the mask selects no pixel at this size.
    """
    kind = MaskShape(shape)
    if not 0 < fraction <= 1:
        raise SpecError(f"mask fraction must be in (0, 1], got {fraction}")
    m = BUILDERS[kind](height, width, fraction, generator)
    if not bool(m.any()):
        raise SpecError(f"the {kind.value} mask at fraction {fraction:g} selects no pixel of a {height}x{width} "
                        f"image; raise the fraction above {_smallest(kind, height, width):.3g}")
    return m


def _smallest(kind: MaskShape, h: int, w: int) -> float:
    """The share of pixels above which a mask of this shape is not empty (half its smallest form)."""
    smallest = {MaskShape.SQUARE: 1, MaskShape.RANDOM: 1, MaskShape.BORDER: 2 * h + 2 * w - 4}[kind]
    return smallest / 2 / (h * w)


def fraction(mask: torch.Tensor) -> float:
    """The actual share of pixels a mask covers."""
    return float(mask.double().mean())
