"""``arch: "timm:<name>"``: a timm architecture built with ``pretrained=False``, for weights from a file.

timm builds the network from its own registry (``timm.create_model``); it never downloads here
(``pretrained=False``) and the checkpoint brings only tensors. What the card leaves out of the
preprocessing (input size, mean, std, resize) comes from the model's pretrained config in timm,
the recipe its published weights were trained with.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from ..card import ArchLibrary, ModelCard, Preprocess, arch_library
from ..errors import ModelCardError, ModelLoadError


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ModelLoadError("model card 'arch' names a timm model, and timm is not installed here: "
                             "pip install 'robustaudit[timm]'") from None
    return timm


def timm_name(card: ModelCard) -> str:
    library, name = arch_library(card.arch or "")
    if library is not ArchLibrary.TIMM:
        raise ModelCardError(f"model card 'arch' {card.arch!r} is not a timm architecture")
    return name


def pretrained_config(name: str) -> dict[str, Any]:
    """timm's pretrained config of ``name`` (``resnet18`` or ``resnet18.a1_in1k``); errors name close matches."""
    timm = _timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=8, cutoff=0.6)
        raise ModelCardError(f"model card 'arch' 'timm:{name}' is not a timm model"
                             f"{f'; close: {close}' if close else ''} (timm {timm.__version__})")
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as exc:  # an unknown tag: "Invalid pretrained tag (x) for resnet18."
        raise ModelCardError(f"model card 'arch' 'timm:{name}': {exc}") from None
    return cfg.to_dict() if cfg is not None else {}


def library_preprocessing(cfg: dict[str, Any], card_size: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """Card fields from a pretrained config: input size, mean, std, and the resize before the crop.

    The resize keeps timm's crop fraction at the input size the model will take (``card_size``
    when the card gives one).
    """
    out: dict[str, Any] = {}
    size = cfg.get("input_size")
    if isinstance(size, (tuple, list)) and len(size) == 3:
        out["input_size"] = tuple(int(v) for v in size)
    for key in ("mean", "std"):
        if isinstance(cfg.get(key), (tuple, list)):
            out[key] = tuple(float(v) for v in cfg[key])
    crop_pct = cfg.get("crop_pct")
    size_used = card_size or out.get("input_size")
    if size_used is not None and isinstance(crop_pct, (int, float)) and 0 < crop_pct <= 1 \
            and cfg.get("crop_mode", "center") == "center":
        # timm's eval transform: resize the shorter side to input / crop_pct, centre-crop the input size.
        side = min(size_used[1:])
        out["preprocess"] = Preprocess(resize=int(side / crop_pct), crop=side)
    return out


def build_timm(card: ModelCard) -> tuple[nn.Module, ModelCard]:
    """The untrained timm network for the card and the card with the library's preprocessing filled in."""
    name = timm_name(card)
    cfg = pretrained_config(name)
    filled = card.filled(**library_preprocessing(cfg, None if "input_size" in card.unset else card.input_size))
    kwargs: dict[str, Any] = {"num_classes": filled.num_classes, "in_chans": filled.channels}
    if cfg.get("fixed_input_size") and "input_size" not in card.unset:
        kwargs["img_size"] = filled.input_size[1:]  # a ViT's position embedding follows the card's size
    timm = _timm()
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise ModelCardError(f"timm cannot build {name!r} for this card ({kwargs}): {str(exc)[:300]}") from None
    return model, filled
