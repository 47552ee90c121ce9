"""Digital corruptions: brightness, contrast, elastic transform, pixelate (ImageNet-C constants)."""

from __future__ import annotations

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
    """Box-downsample, then nearest-neighbour upsample to the original size."""
    c = PIXELATE[severity - 1]
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * c)), max(1, int(w * c))
    rows = box_weights(h, sh, x.device, x.dtype)
    cols = box_weights(w, sw, x.device, x.dtype)
    small = rows @ x @ cols.T
    return F.interpolate(small, size=(h, w), mode="nearest-exact")


def box_weights(size_in: int, size_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(out, in) weights of a box downsampling: each output pixel averages the input span it
    covers, fractional pixels at the ends counted by their overlap (PIL's BOX filter)."""
    scale = size_in / size_out
    lo = torch.arange(size_out, dtype=torch.float64).view(-1, 1) * scale
    hi = lo + scale
    j = torch.arange(size_in, dtype=torch.float64).view(1, -1)
    overlap = (torch.minimum(hi, j + 1) - torch.maximum(lo, j)).clamp_min(0)
    return (overlap / overlap.sum(dim=1, keepdim=True)).to(device, dtype)
