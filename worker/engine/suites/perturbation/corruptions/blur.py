"""Blur corruptions (ImageNet-C constants)."""

from __future__ import annotations

import math

import torch

from . import ops
from .rng import SampleRandom

DEFOCUS = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # disk radius, alias blur
GLASS = ((0.7, 1, 2), (0.9, 2, 1), (1.0, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # sigma, max shift, passes
MOTION = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # radius, sigma
ZOOM_STEPS = ((1.0, 1.11, 0.01), (1.0, 1.16, 0.01), (1.0, 1.21, 0.02), (1.0, 1.26, 0.02), (1.0, 1.31, 0.03))


def defocus_blur(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Convolution with an anti-aliased disk (an out-of-focus lens)."""
    radius, alias = DEFOCUS[severity - 1]
    return ops.filter2d(x, ops.disk_kernel(radius, alias), mode="reflect").clamp(0, 1)


def glass_blur(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Blur, locally scramble pixels, blur again (frosted glass).

    The reference swaps pixels one at a time in a Python loop; here every interior pixel takes
    the value at a random offset in [-d, d) in one gather per pass, which scrambles the same
    neighbourhoods without the loop (a vectorised approximation, not a permutation).
    """
    sigma, delta, passes = GLASS[severity - 1]
    n, c, h, w = x.shape
    y = ops.gaussian_blur(x, sigma).mul_(255).floor_().clamp_(0, 255).div_(255)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    interior = ((ys >= delta) & (ys < h - delta) & (xs >= delta) & (xs < w - delta))
    base = ys * w + xs
    source: torch.Tensor | None = None
    for _ in range(passes):
        # An interior pixel moved by (dy, dx) in [-d, d) stays inside the image.
        step = rng.randint(-delta, delta, (h, w)).mul_(w)
        step += rng.randint(-delta, delta, (h, w))
        flat = step.mul_(interior).add_(base).view(n, h * w)
        # Pass k reads y_k[p] = y_{k-1}[flat[p]]: the passes compose into one source index.
        source = flat if source is None else torch.gather(source, 1, flat)
    if source is not None:
        index = source.view(n, 1, h * w).expand(n, c, h * w)
        y = torch.gather(y.reshape(n, c, h * w), 2, index).view(n, c, h, w)
    return ops.gaussian_blur(y, sigma).clamp_(0, 1)


def motion_blur(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Blur along a random direction in [-45, 45] degrees (camera shake)."""
    radius, sigma = MOTION[severity - 1]
    angle = rng.uniform((), -45.0, 45.0)
    return ops.motion_blur(x, radius, sigma, angle).clamp(0, 1)


def zoom_factors(severity: int) -> list[float]:
    """The zoom factors of ImageNet-C (numpy.arange's count: ceil((stop - start) / step))."""
    start, stop, step = ZOOM_STEPS[severity - 1]
    return [start + i * step for i in range(math.ceil((stop - start) / step))]


def zoom_blur(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Average of centre zooms of growing factor (moving towards the object)."""
    factors = zoom_factors(severity)
    out = x.clone()
    for f in factors:
        # A zoom by exactly 1 is the image itself (bilinear, corners aligned, same size).
        out += x if f == 1.0 else ops.clipped_zoom(x, f)
    return (out / (len(factors) + 1)).clamp(0, 1)
