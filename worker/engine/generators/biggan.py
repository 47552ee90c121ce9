"""BigGAN-deep (Brock et al.) through the ``pytorch-pretrained-biggan`` package (the `biggan` extra).

The package is imported only when a BigGAN card is loaded, and its hub download code is never
called: the weights come from a local file (the package's ``pytorch_model.bin`` is a plain
state dict, which our loader reads with ``weights_only=True``). The card's ``options`` hold
the package's config (``output_dim``, ``z_dim``, ``class_embed_dim``, ``channel_width``,
``num_classes``, ``layers``, ``attention_layer_position``, ...) and ``truncation``.

Perturbable layers, coarse -> fine: ``net.generator.gen_z`` (the 4x4 seed), then each entry of
``net.generator.layers`` (GenBlocks and the self-attention block); :func:`biggan_layers` lists them.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .card import GeneratorCard, GeneratorError

TRUNCATION_BOUND = 2.0


def _package() -> Any:
    try:
        return importlib.import_module("pytorch_pretrained_biggan")
    except ImportError:
        raise GeneratorError("BigGAN generators need the package pytorch-pretrained-biggan: "
                             "pip install 'robustaudit[biggan]'") from None


def biggan_layers(config: dict[str, Any]) -> list[str]:
    """The perturbable layer names of a BigGAN-deep config, coarse -> fine."""
    blocks = len(config.get("layers", [])) + (1 if "attention_layer_position" in config else 0)
    return ["net.generator.gen_z"] + [f"net.generator.layers.{i}" for i in range(blocks)]


class BigGANDeep(nn.Module):
    """G(z, y) -> images in [0, 1] for the BigGAN-deep network of pytorch-pretrained-biggan.

    Args:
        config: keyword arguments of the package's ``BigGANConfig``.
        truncation: the truncation trick's threshold in (0, 1]; latents are drawn from a
            normal truncated to [-2, 2] and scaled by it, and the network's batch-norm
            statistics are interpolated with it.
    """

    def __init__(self, config: dict[str, Any], truncation: float = 0.4) -> None:
        super().__init__()
        if not 0 < truncation <= 1:
            raise GeneratorError(f"BigGAN truncation must be in (0, 1], got {truncation}")
        pkg = _package()
        cfg = pkg.BigGANConfig.from_dict({k: v for k, v in config.items() if k != "truncation"})
        cfg.layers = [tuple(layer) for layer in cfg.layers]
        self.net = pkg.BigGAN(cfg)
        self.latent_dim = int(cfg.z_dim)
        self.num_classes = int(cfg.num_classes)
        self.truncation = float(truncation)

    @classmethod
    def from_card(cls, card: GeneratorCard) -> BigGANDeep:
        options = dict(card.options)
        truncation = float(options.pop("truncation", 0.4))
        config = options.pop("config", options)
        model = cls(config, truncation=truncation)
        if model.latent_dim != card.latent_dim or model.num_classes != card.num_classes:
            raise GeneratorError(f"the card says latent_dim {card.latent_dim} and num_classes {card.num_classes} "
                                 f"but the BigGAN config gives {model.latent_dim} and {model.num_classes}")
        return model

    def weights_module(self) -> nn.Module:
        """Where a checkpoint of the package (keys ``embeddings.*``, ``generator.*``) loads."""
        return self.net

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(y, self.num_classes).to(z.dtype)
        return (self.net(z, onehot, self.truncation) + 1) / 2

    def sample_latents(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Truncated-normal latents: N(0, 1) redrawn outside [-2, 2], times the truncation."""
        z = torch.randn(n, self.latent_dim, generator=generator)
        for _ in range(100):
            bad = z.abs() > TRUNCATION_BOUND
            if not bad.any():
                break
            z[bad] = torch.randn(int(bad.sum()), generator=generator)
        z = z.clamp(-TRUNCATION_BOUND, TRUNCATION_BOUND)
        device = next(self.parameters()).device
        return (z * self.truncation).to(device)
