"""Weights-only checkpoints: read a state dict safely and load it into a named architecture.

Mismatches are explained in terms of the card ("num_classes in the card is 10 but ...")
rather than as PyTorch's ``load_state_dict`` error, which names no likely cause.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..card import ModelCard
from ..errors import ModelCardError, ModelLoadError
from .messages import first_sentence

_NESTED_KEYS = ("state_dict", "model")
_PARALLEL_PREFIX = "module."
# BatchNorm's step counter is unused in eval mode; some exporters leave it out.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


def read_torch_state_dict(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: a pickle cannot run code or build objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"{path.name} holds objects other than tensors ({_unpickling_reason(exc)}) and is not loaded, "
            "for safety: save model.state_dict() with torch.save, or use safetensors") from None
    except (RuntimeError, ValueError, EOFError, OSError) as exc:
        raise ModelLoadError(
            f"{path.name} is not a readable torch.save state dict: {first_sentence(exc)}") from None


def normalise_state_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}``: unwrap ``state_dict``/``model``, drop DataParallel's ``module.``."""
    if isinstance(raw, dict):
        for key in _NESTED_KEYS:
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw:
        raise ModelLoadError(f"{path.name} must hold a non-empty dict of tensors (a state dict), "
                             f"got {type(raw).__name__}")
    bad = sorted(str(k) for k, v in raw.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise ModelLoadError(f"{path.name} holds values other than tensors under {bad[:5]}: save "
                             "model.state_dict() (or put it under a 'state_dict' key)")
    if all(k.startswith(_PARALLEL_PREFIX) for k in raw):
        raw = {k[len(_PARALLEL_PREFIX):]: v for k, v in raw.items()}
    return dict(raw)


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], card: ModelCard, path: Path) -> None:
    """Copy ``weights`` into ``model``; every key must match by name and shape."""
    expected = model.state_dict()
    _check_head(expected, weights, card, path)
    missing = [k for k in expected if k not in weights and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in weights if k not in expected]
    wrong = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"shape mismatches (checkpoint vs {card.arch}) {wrong[:5]}")
        raise ModelLoadError(f"{path.name} does not fit architecture {card.arch!r}: {'; '.join(parts)}. "
                             "Check 'arch' in the model card.")
    try:
        model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"{path.name}: cannot load weights into {card.arch!r}: {first_sentence(exc)}") from None


def _check_head(expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], card: ModelCard,
                path: Path) -> None:
    """Name the usual culprit of a shape mismatch: the classifier layer's row count."""
    n = card.num_classes
    for key, want in expected.items():
        got = weights.get(key)
        if (got is not None and want.ndim >= 1 and got.ndim == want.ndim and want.shape[0] == n
                and got.shape[0] != n and got.shape[1:] == want.shape[1:]):
            raise ModelCardError(f"num_classes in the card is {n} but the checkpoint's {key} has "
                                 f"{got.shape[0]} rows ({path.name})")


def _unpickling_reason(exc: BaseException) -> str:
    """The useful part of torch's long weights_only message."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it refers to {found.group(1)}; a whole pickled model or a custom class?"
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if found:
        return f"or it is no torch.save file at all: {found.group(1).strip()[:200]}"
    return first_sentence(exc)
