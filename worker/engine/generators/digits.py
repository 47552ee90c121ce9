"""A small class-conditional generator for the 32x32 digits demo.

The network is built from named submodules ordered coarse -> fine (see :data:`LAYERS`); the
perturbation suite adds a perturbation to one layer's output through a forward hook, so every
name in :data:`LAYERS` is a direct submodule whose output is a single tensor:

======== ==================
layer    output shape
======== ==================
fc       (N, 128, 4, 4)
block1   (N, 64, 8, 8)
block2   (N, 32, 16, 16)
block3   (N, 16, 32, 32)
======== ==================

``to_image`` (conv + sigmoid) then maps the last block to (N, 1, 32, 32) in [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

LAYERS: tuple[str, ...] = ("fc", "block1", "block2", "block3")


def _up_block(c_in: int, c_out: int) -> nn.Sequential:
    """Double the spatial size (nearest), then a 3x3 convolution and ReLU."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
                         nn.ReLU())


class DigitsGenerator(nn.Module):
    """Class-conditional generator G(z, y) -> (N, 1, 32, 32) images in [0, 1].

    Args:
        latent_dim: length of the latent vector z (sampled from N(0, I)).
        num_classes: number of classes y can take.
        embed_dim: length of the learned class embedding concatenated to z.
    """

    def __init__(self, latent_dim: int = 32, num_classes: int = 10, embed_dim: int = 16) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.fc = nn.Sequential(nn.Linear(latent_dim + embed_dim, 128 * 4 * 4), nn.ReLU(),
                                nn.Unflatten(1, (128, 4, 4)))
        self.block1 = _up_block(128, 64)
        self.block2 = _up_block(64, 32)
        self.block3 = _up_block(32, 16)
        self.to_image = nn.Sequential(nn.Conv2d(16, 1, kernel_size=3, padding=1), nn.Sigmoid())

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Images for latents ``z`` (N, latent_dim) and integer labels ``y`` (N,)."""
        h = self.fc(torch.cat([z, self.embed(y)], dim=1))
        h = self.block1(h)
        h = self.block2(h)
        h = self.block3(h)
        return self.to_image(h)

    def sample_latents(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` latents from N(0, I) on the parameters' device."""
        device = next(self.parameters()).device
        return torch.randn(n, self.latent_dim, generator=generator).to(device)
