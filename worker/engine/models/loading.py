"""``load_classifier``: checkpoint + model card -> a probed :class:`Classifier`.

Lifecycle: resolve the card, check the file, hash it, read it with the loader of the card's
format, wrap it, and run a small probe batch so that a wrong ``num_classes``, a wrong
``input_size`` or a model that outputs NaN fails now, with a clear message, rather than
half-way through an audit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from ..card import ModelCard, default_card_path, require_batch_fits
from ..classifier import Classifier
from ..errors import ModelCardError, ModelLoadError
from .formats import LOADERS
from .messages import is_out_of_memory, model_message

_CHUNK = 1 << 20
PROBE_BATCH = 2
PROBE_SEED = 0
#: The probe batch may take at most this much (a card at the input-size limits needs 400 MB).
PROBE_MAX_BYTES = 1 << 30


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks so a multi-GB checkpoint is never held in memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_card(card: ModelCard | str | Path | dict[str, Any] | None, checkpoint: Path) -> ModelCard:
    """The card as given, or the ``<name>.card.json`` beside the checkpoint."""
    if isinstance(card, ModelCard):
        return card
    if isinstance(card, dict):
        return ModelCard.from_dict(card)
    if isinstance(card, (str, Path)):
        return ModelCard.from_file(card)
    if card is None:
        path = default_card_path(checkpoint)
        if not path.is_file():
            raise ModelCardError(f"no model card given and none beside the checkpoint: looked for {path.name}")
        return ModelCard.from_file(path)
    raise TypeError(f"card must be a ModelCard, a dict or a path, not {type(card).__name__}")


def load_classifier(checkpoint: str | Path, card: ModelCard | str | Path | dict[str, Any] | None = None,
                    *, device: str | torch.device = "cpu") -> Classifier:
    """Load a checkpoint as its card describes, wrap it and probe it.

    Raises:
        ModelLoadError: the file is missing, unreadable or not of the card's format.
        ModelCardError: the card is missing or does not fit the checkpoint.
        ModelOutputError: the model runs but its output is not finite N x num_classes logits.
    """
    path = Path(checkpoint)
    if not path.exists():
        raise ModelLoadError(f"checkpoint not found: {path.name}")
    if not path.is_file():
        raise ModelLoadError(f"checkpoint is not a file: {path.name}")
    model_card = resolve_card(card, path)
    target = torch.device(device)
    digest = sha256_file(path)
    if model_card.format not in LOADERS:
        raise ModelCardError(f"model card 'format' {model_card.format.value!r} has no file to load")
    loaded = LOADERS[model_card.format](path, model_card, target)
    classifier = Classifier(loaded.model, loaded.card or model_card, sha256=digest, device=target,
                            fixed_batch=loaded.fixed_batch)
    if loaded.max_batch is not None:
        classifier.batch.size = min(classifier.batch.size, loaded.max_batch)
    probe(classifier)
    return classifier


def probe(classifier: Classifier) -> None:
    """Run two seeded noise images through the model and check its output."""
    # Estimated before torch allocates: a card from outside the card validator could still ask for terabytes.
    require_batch_fits(tuple(classifier.input_size), PROBE_BATCH, limit_bytes=PROBE_MAX_BYTES,
                       what="the probe batch")
    generator = torch.Generator().manual_seed(PROBE_SEED)
    x = torch.rand(PROBE_BATCH, *classifier.input_size, generator=generator)
    try:
        with torch.no_grad():
            out = classifier(x.to(classifier.device))
    # AssertionError: a torch.export program's input guards fail with it.
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
        if is_out_of_memory(exc):  # not the card's fault: reported as model_out_of_memory by the sandbox
            raise
        raise ModelCardError(
            f"the model fails on a probe batch of shape {tuple(x.shape)}: {model_message(exc)}; "
            "check 'input_size' (and 'format') in the model card") from None
    classifier.check_output(out, PROBE_BATCH)
