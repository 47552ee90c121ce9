"""Class-conditional generators for the generator-layer perturbation suite (docs/suites/perturbation.md, 3a).

Each architecture is a plain :class:`torch.nn.Module` with ``forward(z, y) -> images`` in
[0, 1], ``sample_latents(n, generator=)`` and named submodules to perturb, listed coarse to
fine in its card. A generator card's ``arch`` picks the class from :data:`GENERATOR_ARCHS`;
:func:`load_generator` reads weights with the same safety rules as models.
"""

from __future__ import annotations

from torch import nn

from .biggan import BigGANDeep, biggan_layers
from .card import GeneratorCard, GeneratorError, GeneratorFormat
from .digits import LAYERS as DIGITS_LAYERS
from .digits import DigitsGenerator
from .loading import LoadedGenerator, load_generator

GENERATOR_ARCHS: dict[str, type[nn.Module]] = {"digits_cgen": DigitsGenerator, "biggan_deep": BigGANDeep}

__all__ = ["DIGITS_LAYERS", "GENERATOR_ARCHS", "BigGANDeep", "DigitsGenerator", "GeneratorCard", "GeneratorError",
           "GeneratorFormat", "LoadedGenerator", "biggan_layers", "load_generator"]
