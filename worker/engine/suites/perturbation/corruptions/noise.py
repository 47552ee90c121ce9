"""Noise corruptions (ImageNet-C constants)."""

from __future__ import annotations

import torch

from .rng import SampleRandom

GAUSSIAN_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
SHOT_PHOTONS = (60, 25, 12, 5, 3)
IMPULSE_AMOUNT = (0.03, 0.06, 0.09, 0.17, 0.27)


def gaussian_noise(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Additive white Gaussian noise."""
    std = GAUSSIAN_STD[severity - 1]
    return (x + rng.normal(x.shape[1:], 0.0, std)).clamp(0, 1)


def shot_noise(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Poisson (photon-count) noise: fewer photons per unit of intensity is noisier."""
    photons = SHOT_PHOTONS[severity - 1]
    return (rng.poisson(x * photons) / photons).to(x.dtype).clamp(0, 1)


def impulse_noise(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Salt-and-pepper noise on a fraction of the values (each channel independently)."""
    amount = IMPULSE_AMOUNT[severity - 1]
    hit = rng.uniform(x.shape[1:]) < amount
    salt = rng.uniform(x.shape[1:]) < 0.5
    out = torch.where(hit & salt, torch.ones_like(x), x)
    return torch.where(hit & ~salt, torch.zeros_like(x), out)
