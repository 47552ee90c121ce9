"""``load_generator``: weights + generator card -> a ready generator on a device.

Same safety rules as models: safetensors through the safetensors library, or a state dict read
with ``weights_only=True`` (a zip-format one bounded first); nothing in the file runs code.
Keys and shapes must match the registered architecture exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..errors import ModelLoadError
from ..models.formats import read_state_dict
from ..models.loading import sha256_file
from ..models.safetensors_file import load_safetensors
from ..models.weights import normalise_state_dict
from .biggan import BigGANDeep
from .card import GeneratorCard, GeneratorError, GeneratorFormat
from .digits import DigitsGenerator


def _build_digits(card: GeneratorCard) -> nn.Module:
    return DigitsGenerator(latent_dim=card.latent_dim, num_classes=card.num_classes, **card.options)


#: arch -> builder from the card.
BUILDERS: dict[str, Callable[[GeneratorCard], nn.Module]] = {
    "digits_cgen": _build_digits,
    "biggan_deep": BigGANDeep.from_card,
}

READERS: dict[GeneratorFormat, Callable[[Path], Any]] = {
    GeneratorFormat.SAFETENSORS: load_safetensors,
    GeneratorFormat.STATE_DICT: read_state_dict,
}


@dataclass
class LoadedGenerator:
    """A generator ready to run.

    Args:
        model: the network; ``model(z, y)`` gives images in [0, 1], ``model.sample_latents(n, generator=)``
            draws latents.
        card: its card.
        sha256: hex digest of the weights file.
        path: where the weights were read from.
    """

    model: nn.Module
    card: GeneratorCard
    sha256: str
    path: Path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        sampler = cast(Callable[..., torch.Tensor], self.model.sample_latents)
        out = sampler(n, generator=generator)
        return out.to(self.device)

    def describe(self) -> dict[str, Any]:
        return {"name": self.card.name, "arch": self.card.arch, "sha256": self.sha256,
                "output_size": list(self.card.output_size), "layers": list(self.card.layers)}


def load_generator(path: str | Path, card: GeneratorCard | str | Path | dict[str, Any] | None = None, *,
                   device: str | torch.device = "cpu") -> LoadedGenerator:
    """Load generator weights as its card (default ``<stem>.card.json`` beside them) describes."""
    p = Path(path)
    if not p.is_file():
        raise GeneratorError(f"generator weights not found: {p.name}")
    gcard = _resolve_card(card, p)
    model = BUILDERS[gcard.arch](gcard)
    try:
        raw = READERS[gcard.format](p)
        weights = normalise_state_dict(raw, p)
    except ModelLoadError as exc:
        raise GeneratorError(exc.message) from None
    target = getattr(model, "weights_module", lambda: model)()
    _load_exact(target, weights, gcard, p)
    model.eval().to(torch.device(device))
    for param in model.parameters():
        param.requires_grad_(False)
    for name in gcard.layers:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise GeneratorError(f"the generator card lists layer {name!r}, which {gcard.arch!r} "
                                 "does not have") from None
    loaded = LoadedGenerator(model=model, card=gcard, sha256=sha256_file(p), path=p)
    _probe(loaded)
    return loaded


def _resolve_card(card: GeneratorCard | str | Path | dict[str, Any] | None, weights: Path) -> GeneratorCard:
    if isinstance(card, GeneratorCard):
        return card
    if isinstance(card, dict):
        return GeneratorCard.from_dict(card)
    if card is None:
        card = weights.with_name(weights.name.split(".")[0] + ".card.json")
        if not Path(card).is_file():
            raise GeneratorError("no generator card given and none beside the weights: looked for "
                                 f"{Path(card).name}")
    return GeneratorCard.from_file(card)


def _load_exact(model: nn.Module, weights: dict[str, torch.Tensor], card: GeneratorCard, path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise GeneratorError(f"{path.name} does not fit generator arch {card.arch!r} with this card: "
                             f"missing {missing[:4]}, unexpected {unexpected[:4]}, shape mismatches {wrong[:4]}; "
                             "check the card's arch, latent_dim, num_classes and options")
    model.load_state_dict(weights)


def _probe(gen: LoadedGenerator) -> None:
    """Two latents through the generator: the output must be finite images of the card's size."""
    g = torch.Generator().manual_seed(0)
    z = gen.sample_latents(2, g)
    y = torch.zeros(2, dtype=torch.long, device=gen.device)
    with torch.no_grad():
        out = gen.model(z, y)
    if not isinstance(out, torch.Tensor) or tuple(out.shape[1:]) != gen.card.output_size:
        shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise GeneratorError(f"the generator makes images of shape {shape}, but its card says output_size "
                             f"{list(gen.card.output_size)}")
    if not torch.isfinite(out).all():
        raise GeneratorError("the generator output contains NaN or infinite values")
