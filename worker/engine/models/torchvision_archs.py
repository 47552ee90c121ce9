"""torchvision architectures a weights-only checkpoint (safetensors, state_dict) may name.

A registry maps each name to a function of the card giving the extra keyword arguments
of ``torchvision.models.get_model``; torchvision itself is imported only when one is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..card import ModelCard
from ..errors import ModelCardError

ArchKwargs = Callable[[ModelCard], dict[str, Any]]


def _plain(card: ModelCard) -> dict[str, Any]:
    return {}


def _vit(patch: int) -> ArchKwargs:
    """ViTs bake the image size into their position embedding: it must come from the card."""

    def kwargs(card: ModelCard) -> dict[str, Any]:
        _, h, w = card.input_size
        if h != w:
            raise ModelCardError(f"model card 'input_size' must be square for a ViT, got {h}x{w}")
        if h % patch:
            raise ModelCardError(f"model card 'input_size' {h}x{w} must be a multiple of the ViT's "
                                 f"patch size {patch}")
        return {"image_size": h}

    return kwargs


ARCHS: dict[str, ArchKwargs] = {
    "resnet18": _plain, "resnet34": _plain, "resnet50": _plain, "resnet101": _plain,
    "wide_resnet50_2": _plain, "vgg16": _plain, "densenet121": _plain,
    "mobilenet_v2": _plain, "mobilenet_v3_large": _plain, "efficientnet_b0": _plain,
    "convnext_tiny": _plain, "vit_b_16": _vit(16), "vit_b_32": _vit(32),
}

SUPPORTED_ARCHS: tuple[str, ...] = tuple(ARCHS)


def build_arch(card: ModelCard) -> nn.Module:
    """An untrained torchvision network shaped by the card (num_classes, ViT image size)."""
    if card.arch not in ARCHS:
        raise ModelCardError(f"model card 'arch' {card.arch!r} is not supported; supported: "
                             f"{list(SUPPORTED_ARCHS)}")
    if card.channels != 3:
        raise ModelCardError(f"torchvision architecture {card.arch!r} takes 3-channel images but the "
                             f"model card 'input_size' has {card.channels}")
    extra = ARCHS[card.arch](card)
    import torchvision  # lazily: only weight formats need it

    return torchvision.models.get_model(card.arch, weights=None, num_classes=card.num_classes, **extra)
