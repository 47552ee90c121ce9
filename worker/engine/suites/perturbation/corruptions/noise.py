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
    noise = rng.normal(x.shape[1:], 0.0, std).to(torch.promote_types(x.dtype, torch.float32))
    return noise.add_(x).clamp_(0, 1).to(x.dtype)


def shot_noise(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Poisson (photon-count) noise: fewer photons per unit of intensity is noisier."""
    photons = SHOT_PHOTONS[severity - 1]
    return rng.poisson(x * photons).div_(photons).to(x.dtype).clamp_(0, 1)


def impulse_noise(x: torch.Tensor, severity: int, rng: SampleRandom) -> torch.Tensor:
    """Salt-and-pepper noise on a fraction of the values (each channel independently).

    Each sample's stream gives a uniform per value for "hit", then one for "salt"; a hit value
    becomes 1 on salt and 0 otherwise. The draws' buffers are reused for the result.
    """
    amount = IMPULSE_AMOUNT[severity - 1]
    hit = rng.uniform(x.shape[1:])
    salt = rng.uniform(x.shape[1:])
    mask = hit < amount
    if x.dtype != hit.dtype:
        return torch.where(mask, (salt < 0.5).to(x.dtype), x)
    return torch.where(mask, salt.lt_(0.5), x, out=hit)
