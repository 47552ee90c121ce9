"""Digital corruptions: brightness, contrast, elastic transform, pixelate (ImageNet-C constants)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import ops
from .rng import SampleRandom

BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
ELASTIC_ALPHA = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)


def brightness(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Raise the HSV value channel by a constant.

    With hue and saturation fixed, RGB scales with V, so the HSV round trip is a per-pixel
    rescaling by V'/V (black pixels become grey V').
    """
    c = BRIGHTNESS[severity - 1]
    if x.shape[1] != 3:
        return (x + c).clamp(0, 1)
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp_(0, 1)
    out = x * (v_new / v.clamp_min(1e-12))
    return torch.where(v > 0, out, v_new, out=out).clamp_(0, 1)


def contrast(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Pull every pixel towards its channel's mean."""
    c = CONTRAST[severity - 1]
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean).mul_(c).add_(mean).clamp_(0, 1)


def elastic_transform(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Warp by a smoothed random displacement field (the imagecorruptions package's variant,
    whose smoothing and displacement scale with the image size, so small images work)."""
    alpha = ELASTIC_ALPHA[severity - 1]
    n, c, h, w = x.shape
    sigma = (h * 0.01, w * 0.01)
    max_d = h * 0.005
    field = rng.uniform((2, h, w), -max_d, max_d).to(x.dtype)
    field = ops.gaussian_blur(field, sigma, truncate=3.0, mode="reflect").mul_(alpha)
    dy, dx = field[:, 0], field[:, 1]
    # The sampling grid in grid_sample's [-1, 1] coordinates, (x, y) last, built in place.
    grid = torch.empty((n, h, w, 2), dtype=x.dtype, device=x.device)
    for i, (d, size, view) in enumerate(((dx, w, (1, 1, w)), (dy, h, (1, h, 1)))):
        pos = torch.arange(size, device=x.device, dtype=x.dtype).view(view)
        torch.add(pos, d, out=grid[..., i]).mul_(2).div_(max(size - 1, 1)).sub_(1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    return out.clamp_(0, 1)


def pixelate(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """PIL's BOX downsampling, then its NEAREST upsampling back to the original size (ImageNet-C).

    Both are matrix products or an index gather on the whole batch; on float images they give
    PIL's float ("F") resize to float32 rounding.
    """
    c = PIXELATE[severity - 1]
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * c)), max(1, int(w * c))
    rows = box_weights(h, sh, x.device, x.dtype)
    cols = box_weights(w, sw, x.device, x.dtype)
    small = rows @ x @ cols.T
    # One gather over each flattened plane (a gather per axis is ten times slower on a CPU).
    flat = (nearest_index(sh, h).view(-1, 1) * sw + nearest_index(sw, w).view(1, -1)).view(-1)
    n, ch = x.shape[:2]
    return small.reshape(n * ch, sh * sw).index_select(1, flat.to(x.device)).view(n, ch, h, w)


@functools.lru_cache(maxsize=64)
def nearest_index(size_in: int, size_out: int) -> torch.Tensor:
    """Source index of each output pixel in PIL's NEAREST resize (cached; do not modify).

    PIL walks the source coordinate of the output pixels' centres, starting at scale / 2 and
    adding scale = size_in / size_out once per pixel in float64, and truncates it. Where a
    centre falls exactly on a source pixel's edge (16 -> 28: 3.5 * 16 / 28 = 2), the rounding
    of that running sum, not the exact value, picks the pixel; so it is reproduced step by step
    (a closed formula, in exact or in float arithmetic, disagrees with PIL at such points).
    """
    scale = size_in / size_out
    at, index = 0.5 * scale, []
    for _ in range(size_out):
        index.append(min(int(at), size_in - 1))
        at += scale
    return torch.tensor(index)


def box_weights(size_in: int, size_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(out, in) weights of PIL's BOX resize along one axis (see :func:`_box_weights`)."""
    return _box_weights(size_in, size_out).to(device, dtype)


@functools.lru_cache(maxsize=64)
def _box_weights(size_in: int, size_out: int) -> torch.Tensor:
    """(out, in) weights of PIL's BOX downsampling (what ImageNet-C's pixelate uses).

    PIL does not weigh a source pixel by its overlap with the output pixel's span: output i
    averages, with equal weights, the source pixels whose centres lie in its span
    (i * scale, (i + 1) * scale], scale = size_in / size_out (on upsampling, the pixel
    nearest the centre, as a box one source pixel wide picks). The bounds are computed as PIL
    computes them, from the span's centre and half-width in float64, so that pixels whose
    centres fall on a bound are assigned as PIL assigns them (it matters at scales like 2.5).
    """
    scale = size_in / size_out
    centre = (torch.arange(size_out, dtype=torch.float64) + 0.5) * scale
    width = max(scale, 1.0)  # upsampling keeps a box one source pixel wide
    half = 0.5 * width
    first = (centre - half + 0.5).floor().clamp(0, size_in).view(-1, 1)
    stop = (centre + half + 0.5).floor().clamp(0, size_in).view(-1, 1)
    j = torch.arange(size_in, dtype=torch.float64).view(1, -1)
    # Inside [first, stop) and inside the box (-1/2, 1/2] in units of the scale about the centre.
    offset = (j - centre.view(-1, 1) + 0.5) / width
    inside = (j >= first) & (j < stop) & (offset > -0.5) & (offset <= 0.5)
    w = inside.double()
    return w / w.sum(dim=1, keepdim=True)
