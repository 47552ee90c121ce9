"""The 15 ImageNet-C corruptions on tensors (Hendrycks and Dietterich, 2019).

Every corruption is a function ``(images, severity, rng) -> images``: N x C x H x W floats
in [0, 1] on any device, C = 1 or 3, severity 1..5, ``rng`` a :class:`SampleRandom` with
one seeded stream per image. The severity constants are ImageNet-C's, so severity 3 here
means what it means in the literature; :data:`CORRUPTIONS` maps each name to its function.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch

from .blur import defocus_blur, glass_blur, motion_blur, zoom_blur
from .digital import brightness, contrast, elastic_transform, pixelate
from .jpeg import jpeg_compression
from .noise import gaussian_noise, impulse_noise, shot_noise
from .rng import SampleRandom, sample_seed
from .weather import fog, frost, snow

CorruptionFn = Callable[[torch.Tensor, int, SampleRandom], torch.Tensor]


class CorruptionFamily(str, Enum):
    NOISE = "noise"
    BLUR = "blur"
    WEATHER = "weather"
    DIGITAL = "digital"


#: name -> (family, function), in ImageNet-C's order.
CORRUPTIONS: dict[str, tuple[CorruptionFamily, CorruptionFn]] = {
    "gaussian_noise": (CorruptionFamily.NOISE, gaussian_noise),
    "shot_noise": (CorruptionFamily.NOISE, shot_noise),
    "impulse_noise": (CorruptionFamily.NOISE, impulse_noise),
    "defocus_blur": (CorruptionFamily.BLUR, defocus_blur),
    "glass_blur": (CorruptionFamily.BLUR, glass_blur),
    "motion_blur": (CorruptionFamily.BLUR, motion_blur),
    "zoom_blur": (CorruptionFamily.BLUR, zoom_blur),
    "snow": (CorruptionFamily.WEATHER, snow),
    "frost": (CorruptionFamily.WEATHER, frost),
    "fog": (CorruptionFamily.WEATHER, fog),
    "brightness": (CorruptionFamily.DIGITAL, brightness),
    "contrast": (CorruptionFamily.DIGITAL, contrast),
    "elastic_transform": (CorruptionFamily.DIGITAL, elastic_transform),
    "pixelate": (CorruptionFamily.DIGITAL, pixelate),
    "jpeg_compression": (CorruptionFamily.DIGITAL, jpeg_compression),
}

SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(images: torch.Tensor, name: str, severity: int, rng: SampleRandom) -> torch.Tensor:
    """``images`` under corruption ``name`` at ``severity``; the batch is processed at once."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {list(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1..5, got {severity}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be N x C x H x W with C = 1 or 3, got {tuple(images.shape)}")
    if len(rng) != images.shape[0]:
        raise ValueError(f"one random stream per image: {len(rng)} streams for {images.shape[0]} images")
    return CORRUPTIONS[name][1](images, severity, rng)


__all__ = ["CORRUPTIONS", "SEVERITIES", "CorruptionFamily", "CorruptionFn", "SampleRandom", "corrupt",
           "sample_seed"]
