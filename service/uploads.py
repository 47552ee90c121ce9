"""Registering an uploaded checkpoint: stream it to storage, validate it by loading it with
its card (an upload that is not a checkpoint is refused), and deduplicate by content."""

from __future__ import annotations

import hashlib
import json
from typing import IO, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.engine.card import ModelCard
from worker.engine.errors import ModelCardError
from worker.engine.models import load_classifier

from .storage import Storage
from .store.models import Model


def parse_card(raw: bytes | str) -> dict[str, Any]:
    """The card as a validated dict; a ModelCardError (422) says what is wrong with it."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelCardError(f"the model card is not valid JSON: {exc}") from None
    return ModelCard.from_dict(data).to_dict()


def register_model(session: Session, storage: Storage, *, tenant: str, stream: IO[bytes], filename: str,
                   card_raw: bytes | str, max_bytes: int) -> tuple[Model, bool]:
    """(model, created). The same checkpoint with the same card is the same model of the tenant."""
    card = parse_card(card_raw)
    card_sha = hashlib.sha256(json.dumps(card, sort_keys=True).encode()).hexdigest()
    stored = storage.save_upload(stream, filename, max_bytes=max_bytes)
    existing = session.scalar(select(Model).where(Model.tenant == tenant, Model.sha256 == stored.sha256,
                                                  Model.card_sha256 == card_sha))
    if existing is not None:
        return existing, False
    try:
        load_classifier(stored.path, card, device="cpu")
    except Exception:
        in_use = session.scalar(select(func.count()).select_from(Model).where(Model.sha256 == stored.sha256))
        if not in_use:
            stored.path.unlink(missing_ok=True)
        raise
    model = Model(tenant=tenant, name=str(card.get("name") or filename or stored.sha256[:12]),
                  sha256=stored.sha256, card_sha256=card_sha, format=str(card["format"]),
                  size_bytes=stored.size, path=str(stored.path), card=card)
    session.add(model)
    session.flush()
    return model, True
