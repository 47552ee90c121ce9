"""torchvision architectures a weights-only checkpoint (safetensors, state_dict) may name.

Every classification model torchvision registers (``torchvision.models.list_models(module=
torchvision.models)``) is accepted, by its name or as ``torchvision:<name>``. Building one runs
torchvision's own code with ``weights=None``: nothing is downloaded and nothing in the
checkpoint is code. A few families bake the image size into their parameters and take it from
the card; torchvision itself is imported only when a model is built.
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import Any

from torch import nn

from ..card import ArchLibrary, ModelCard, arch_library
from ..errors import ModelCardError

_VIT = re.compile(r"^vit_[a-z]_(\d+)$")


@functools.lru_cache(maxsize=1)
def supported_archs() -> tuple[str, ...]:
    """The names of torchvision's classification models (not detection, segmentation or video)."""
    import torchvision  # lazily: the torch-only engine never needs it

    return tuple(torchvision.models.list_models(module=torchvision.models))


def __getattr__(name: str) -> Any:
    # SUPPORTED_ARCHS is computed on first use, so importing this module does not import torchvision.
    if name == "SUPPORTED_ARCHS":
        return supported_archs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _size_kwargs(name: str, card: ModelCard) -> dict[str, Any]:
    """ViTs bake the image size into their position embedding, MaxViT into its attention grid."""
    _, h, w = card.input_size
    vit = _VIT.match(name)
    if vit:
        patch = int(vit.group(1))
        if h != w:
            raise ModelCardError(f"model card 'input_size' must be square for a ViT, got {h}x{w}")
        if h % patch:
            raise ModelCardError(f"model card 'input_size' {h}x{w} must be a multiple of the ViT's "
                                 f"patch size {patch}")
        return {"image_size": h}
    if name.startswith("maxvit_"):
        return {"input_size": (h, w)}
    return {}


def torchvision_name(card: ModelCard) -> str:
    """The torchvision model name of a card's ``arch`` (``torchvision:`` prefix removed)."""
    library, name = arch_library(card.arch or "")
    if library is not ArchLibrary.TORCHVISION:
        raise ModelCardError(f"model card 'arch' {card.arch!r} is not a torchvision architecture")
    return name


def build_arch(card: ModelCard) -> nn.Module:
    """An untrained torchvision network shaped by the card (num_classes, image size where it matters)."""
    name = torchvision_name(card)
    known = supported_archs()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=8, cutoff=0.6)
        raise ModelCardError(f"model card 'arch' {card.arch!r} is not a torchvision classification model"
                             f"{f'; close: {close}' if close else ''} (all {len(known)}: "
                             "torchvision.models.list_models(module=torchvision.models)); for timm write "
                             "'timm:<name>'")
    if card.channels != 3:
        raise ModelCardError(f"torchvision architecture {name!r} takes 3-channel images but the "
                             f"model card 'input_size' has {card.channels}")
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None, num_classes=card.num_classes,
                                            **_size_kwargs(name, card))
    except (ValueError, TypeError, RuntimeError) as exc:  # e.g. a size the architecture cannot take
        raise ModelCardError(f"torchvision cannot build {name!r} for this card: {exc}") from None
