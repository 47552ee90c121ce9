"""The generator card: what the perturbation suite must know about a generator besides its weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ..card import MAX_INPUT_ELEMENTS, MAX_INPUT_SIDE, MAX_NAME_CHARS, MAX_NUM_CLASSES, is_bounded_name, short_repr
from ..errors import AuditInputError
from ..jsonfile import read_json

# A generator card is client input: bounded like a model card before anything is built from it.
MAX_LATENT_DIM = 65_536
MAX_LAYERS = 1000


class GeneratorError(AuditInputError):
    """The generator, its card or its fit to the audited model is wrong."""

    code = "generator_error"


class GeneratorFormat(str, Enum):
    """Weights for a registered generator architecture; hooks need named submodules, so a
    traced or exported program (which has none we can rely on) is not accepted."""

    SAFETENSORS = "safetensors"
    STATE_DICT = "state_dict"


@dataclass(frozen=True)
class GeneratorCard:
    """Everything about a generator that is not its weights.

    Args:
        arch: a key of :data:`~worker.engine.generators.GENERATOR_ARCHS`.
        format: how the weights are stored.
        latent_dim: length of z.
        num_classes: number of classes y can take (conditional generators).
        conditional: whether G takes a class y.
        output_size: [C, H, W] of the images G makes (in [0, 1]).
        layers: perturbable submodule names, coarse -> fine.
        class_names: one name per generator class; matched to the model's class names.
        options: architecture settings (e.g. a BigGAN config, ``truncation``).
        name: free-form display name.
    """

    arch: str
    format: GeneratorFormat
    latent_dim: int
    num_classes: int
    conditional: bool
    output_size: tuple[int, int, int]
    layers: tuple[str, ...]
    class_names: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @classmethod
    def from_dict(cls, raw: Any) -> GeneratorCard:
        """Validate a card read from JSON; every problem names the field to fix."""
        if not isinstance(raw, dict):
            raise GeneratorError("the generator card must be a JSON object")
        from . import GENERATOR_ARCHS

        def need(key: str) -> Any:
            if key not in raw:
                raise GeneratorError(f"the generator card has no {key!r}")
            return raw[key]

        arch = need("arch")
        if not isinstance(arch, str) or arch not in GENERATOR_ARCHS:
            raise GeneratorError(f"unknown generator arch {short_repr(arch)}; known: {sorted(GENERATOR_ARCHS)}")
        try:
            fmt = GeneratorFormat(need("format"))
        except ValueError:
            raise GeneratorError(f"generator format {short_repr(raw['format'])} is not one of "
                                 f"{[f.value for f in GeneratorFormat]}") from None
        latent = need("latent_dim")
        if not isinstance(latent, int) or isinstance(latent, bool) or not 1 <= latent <= MAX_LATENT_DIM:
            raise GeneratorError(f"latent_dim must be an integer from 1 to {MAX_LATENT_DIM}, got {short_repr(latent)}")
        conditional = raw.get("conditional", False)
        if not isinstance(conditional, bool):
            raise GeneratorError("conditional must be true or false")
        num_classes = raw.get("num_classes", 0)
        names = raw.get("class_names") or []
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes > MAX_NUM_CLASSES:
            raise GeneratorError(f"num_classes must be an integer of at most {MAX_NUM_CLASSES}, "
                                 f"got {short_repr(num_classes)}")
        if not isinstance(names, list) or len(names) > MAX_NUM_CLASSES:
            raise GeneratorError(f"class_names must be a list of at most {MAX_NUM_CLASSES} strings")
        if conditional:
            if num_classes < 1:
                raise GeneratorError("a conditional generator needs class information: num_classes "
                                     "(a positive integer) and class_names in its card")
            if not names:
                raise GeneratorError("a conditional generator needs class information: class_names in its "
                                     "card, so that its classes can be matched to the model's")
            if len(names) != num_classes or not all(is_bounded_name(n) for n in names):
                raise GeneratorError(f"class_names must be {num_classes} strings (num_classes) of at most "
                                     f"{MAX_NAME_CHARS} characters without NUL, got {len(names)}")
        size = need("output_size")
        if (not isinstance(size, list) or len(size) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
                or size[0] not in (1, 3)):
            raise GeneratorError(f"output_size must be [C, H, W] with C 1 or 3, got {short_repr(size)}")
        if max(size[1:]) > MAX_INPUT_SIDE or size[0] * size[1] * size[2] > MAX_INPUT_ELEMENTS:
            raise GeneratorError(f"output_size {size} is above the limits: each side at most {MAX_INPUT_SIDE}, "
                                 f"C x H x W at most {MAX_INPUT_ELEMENTS}")
        layers = need("layers")
        if (not isinstance(layers, list) or not layers or len(layers) > MAX_LAYERS
                or not all(is_bounded_name(v) and v for v in layers)):
            raise GeneratorError(f"layers must be a non-empty list of at most {MAX_LAYERS} submodule names, "
                                 "coarse to fine")
        options = raw.get("options", {})
        if not isinstance(options, dict):
            raise GeneratorError("options must be an object")
        display = raw.get("name") or ""
        if not is_bounded_name(display):
            raise GeneratorError(f"name must be a string of at most {MAX_NAME_CHARS} characters without NUL")
        return cls(arch=arch, format=fmt, latent_dim=latent, num_classes=int(num_classes or 0),
                   conditional=conditional, output_size=(size[0], size[1], size[2]), layers=tuple(layers),
                   class_names=tuple(names), options=dict(options), name=display)

    @classmethod
    def from_file(cls, path: str | Path) -> GeneratorCard:
        return cls.from_dict(read_json(path, what="generator card", error=GeneratorError))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arch": self.arch, "format": self.format.value, "latent_dim": self.latent_dim,
                "num_classes": self.num_classes, "conditional": self.conditional,
                "output_size": list(self.output_size), "layers": list(self.layers),
                "class_names": list(self.class_names), "options": self.options}

