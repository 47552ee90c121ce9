"""Weather corruptions: snow, frost, fog (ImageNet-C constants)."""

from __future__ import annotations

import torch

from . import ops
from .rng import SampleRandom

# mean, std, zoom, threshold, blur radius, blur sigma, blend of the image
SNOW = ((0.1, 0.3, 3.0, 0.5, 10, 4, 0.8), (0.2, 0.3, 2.0, 0.5, 12, 4, 0.7), (0.55, 0.3, 4.0, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))
FROST = ((1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))  # weight of image, of frost
FOG = ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))  # fog strength, fractal decay
# Grey-level statistics of the five frost photographs ImageNet-C draws from (means 0.48 to
# 0.81, standard deviations 0.07 to 0.17); the procedural texture is drawn to match them.
# Channel tint: the photographs are bluish (RGB means 0.57 : 0.66 : 0.70 over a grey 0.64).
FROST_LEVEL = (0.48, 0.81)
FROST_SPREAD = (0.07, 0.17)
FROST_TINT = (0.89, 1.02, 1.09)


def snow(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Falling snow: thresholded, zoomed noise smeared by a motion blur, over a greyed, brightened image."""
    mean, std, zoom, thresh, radius, sigma, blend = SNOW[severity - 1]
    n, c, h, w = x.shape
    flakes = rng.normal((1, h, w), mean, std)
    # As in ImageNet-C, the zoomed layer (a pixel or two larger than the image at some zooms) is
    # blurred whole and cropped after: the blur then drops a tap only once it leaves the larger
    # layer and carries flakes in from beyond the edge. Cropping first lost up to 9% of the snow
    # on 16 px images (severities 4 and 5).
    flakes = ops.clipped_zoom(flakes, zoom, crop=False)
    flakes = flakes.masked_fill(flakes < thresh, 0.0).clamp_(0, 1)
    angle = rng.uniform((), -135.0, -45.0)
    flakes = ops.motion_blur(flakes, radius, sigma, angle)[..., :h, :w]
    flakes = flakes.mul(255).round_().div_(255)
    base = torch.maximum(x, (ops.gray(x) * 1.5).add_(0.5)).mul_(1 - blend)
    base += blend * x
    return base.add_(flakes).add_(flakes.flip(-1, -2)).clamp_(0, 1)


def frost_texture(rng: SampleRandom, h: int, w: int, channels: int) -> torch.Tensor:
    """A procedural frost layer (N x C x H x W in [0, 1]).

    ImageNet-C crops one of six frost photographs; we ship no such files, so the layer is
    synthesised: a fractal (diamond-square) cloud plus thin, bright ice streaks (short
    motion-blurred sparks), rescaled to a brightness level and spread drawn from the range of
    the photographs, with their bluish tint on colour images.
    """
    n = len(rng)
    size = ops.next_power_of_two(max(h, w))
    cloud = ops.plasma_fractal(rng, size, 1.6)[:, None, :h, :w]
    sparks = (rng.uniform((1, h, w)) > 0.97).to(cloud.dtype)
    streaks = ops.motion_blur(sparks, max(1, min(h, w) // 16), 2.0, rng.uniform((), -90.0, 90.0))
    tex = (2.0 * streaks).add_(cloud)
    flat = tex.view(n, -1)
    tex.sub_(flat.mean(1).view(n, 1, 1, 1)).div_(flat.std(1).clamp_min(1e-6).view(n, 1, 1, 1))
    level = rng.uniform((), *FROST_LEVEL).view(n, 1, 1, 1)
    spread = rng.uniform((), *FROST_SPREAD).view(n, 1, 1, 1)
    tex.mul_(spread).add_(level).clamp_(0, 1)
    if channels == 3:
        tint = torch.tensor(FROST_TINT, dtype=tex.dtype, device=tex.device).view(1, 3, 1, 1)
        tex = (tex * tint).clamp_(0, 1)
    elif channels != 1:
        tex = tex.expand(n, channels, h, w)
    return tex


def frost(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Ice on the lens: a blend of the image with a frost layer (synthesised, see frost_texture)."""
    a, b = FROST[severity - 1]
    n, c, h, w = x.shape
    layer = frost_texture(rng, h, w, c).to(x.device, x.dtype)
    out = layer.mul_(b) if layer.shape == x.shape else b * layer
    out += a * x
    return out.clamp_(0, 1)


def fog(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Fog: a fractal haze added, then the range compressed so the brightest pixel keeps its level."""
    strength, decay = FOG[severity - 1]
    n, c, h, w = x.shape
    size = ops.next_power_of_two(max(h, w))
    haze = ops.plasma_fractal(rng, size, decay)[:, None, :h, :w].to(x.device, x.dtype)
    peak = x.reshape(n, -1).amax(dim=1).view(n, 1, 1, 1)
    return ((x + strength * haze) * peak / (peak + strength)).clamp(0, 1)

