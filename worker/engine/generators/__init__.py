"""Class-conditional generators for the generator-layer perturbation suite (SUITES.md 3a).

Each architecture is a plain :class:`torch.nn.Module` with ``forward(z, y) -> images`` in
[0, 1] and a module-level ``LAYERS`` tuple naming its perturbable submodules, coarse to fine.
A generator card's ``arch`` picks the class from :data:`GENERATOR_ARCHS`.
"""

from __future__ import annotations

from torch import nn

from .digits import LAYERS as DIGITS_LAYERS
from .digits import DigitsGenerator

GENERATOR_ARCHS: dict[str, type[nn.Module]] = {"digits_cgen": DigitsGenerator}

__all__ = ["DIGITS_LAYERS", "GENERATOR_ARCHS", "DigitsGenerator"]
