"""Forward hooks that read or shift one named layer's activations.

The perturbation suite adds ``delta`` to a layer's output (``a_l <- a_l + delta``) while the
rest of the generator runs unchanged; the same hook records activations for the spread
estimate. Hooks are removed on exit, even on error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .card import GeneratorError


def layer_module(model: nn.Module, name: str, known: tuple[str, ...]) -> nn.Module:
    """The submodule called ``name``; an unknown name is an error listing the card's layers."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise GeneratorError(f"unknown generator layer {name!r}; the card lists {list(known)}") from None


def _tensor_output(name: str, out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise GeneratorError(f"generator layer {name!r} returns {type(out).__name__}, not one tensor; "
                             "only layers with a single tensor output can be perturbed")
    return out


@contextmanager
def record(model: nn.Module, names: list[str], known: tuple[str, ...]) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the outputs of the named layers of the forward passes inside the block."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            seen[name] = _tensor_output(name, out).detach()

        handles.append(layer_module(model, name, known).register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


class Shift:
    """The perturbation a hooked layer adds; set ``delta`` before each forward pass."""

    def __init__(self) -> None:
        self.delta: torch.Tensor | None = None


@contextmanager
def perturb(model: nn.Module, name: str, known: tuple[str, ...]) -> Iterator[Shift]:
    """Inside the block, the layer's output is replaced by output plus the shift's ``delta``."""
    shift = Shift()

    def hook(_m: nn.Module, _i: Any, out: Any) -> torch.Tensor:
        t = _tensor_output(name, out)
        if shift.delta is None:
            return t
        if shift.delta.shape != t.shape:
            raise GeneratorError(f"perturbation of shape {tuple(shift.delta.shape)} does not fit layer {name!r} "
                                 f"with output {tuple(t.shape)}")
        return t + shift.delta

    handle = layer_module(model, name, known).register_forward_hook(hook)
    try:
        yield shift
    finally:
        handle.remove()
