"""Registering an uploaded checkpoint: stream it to storage, check it in the sandbox (loaded
and probed with its card; an upload that is not a model we accept is refused), and
deduplicate by content. The API process never loads the model itself.

An ONNX model with external data arrives as a zip of the model and its data files, or as the
model and its data file(s) in separate parts, which are written into such a zip
(:func:`bundle_parts`): either way one content-addressed file is stored, and its member names are
checked here (:func:`~worker.engine.models.onnx_bundle.check_bundle`) before the sandbox sees it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.engine.card import ModelCard
from worker.engine.errors import AuditInputError, ModelCardError
from worker.engine.generators.card import GeneratorCard, GeneratorError
from worker.engine.jsonfile import loads_bounded
from worker.engine.models.archive import check_zip_archive
from worker.engine.models.onnx_bundle import check_bundle, write_bundle

from .config import Config
from .sandboxing import check_upload
from .storage import Storage, UploadTooLarge
from .store.models import Model, ModelKind
from .upload_checks import UploadCheckPool

#: a card is a small JSON object: bounded before it is parsed
MAX_CARD_BYTES = 4 * 1024 * 1024
#: (tenant, sha256, card digest, kind, sandbox mode) of uploads this process has checked in the
#: sandbox: the check depends on the content alone, so the same content is not checked twice for
#: one tenant; another tenant's upload of it is checked again, so that its answer takes as long
#: and says nothing about what others uploaded
_seen: set[tuple[str, str, str, str, str]] = set()


def parse_card(raw: bytes | str, kind: ModelKind = ModelKind.CLASSIFIER) -> dict[str, Any]:
    """The card as a validated dict; a ModelCardError or GeneratorError (422) says what is wrong."""
    error = GeneratorError if kind is ModelKind.GENERATOR else ModelCardError
    what = "generator card" if kind is ModelKind.GENERATOR else "model card"
    if len(raw) > MAX_CARD_BYTES:
        raise error(f"the {what} is larger than {MAX_CARD_BYTES // (1024 * 1024)} MB")
    try:
        data = loads_bounded(raw)
    except AuditInputError as exc:
        raise error(f"the {what} is not acceptable JSON: {exc.message}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"the {what} is not valid JSON: {exc}") from None
    if kind is ModelKind.GENERATOR:
        return GeneratorCard.from_dict(data).to_dict()
    return ModelCard.from_dict(data).to_dict()


def register_model(session: Session, storage: Storage, config: Config, *, tenant: str, stream: IO[bytes],
                   filename: str, card_raw: bytes | str, kind: ModelKind = ModelKind.CLASSIFIER,
                   pool: UploadCheckPool | None = None) -> tuple[Model, bool]:
    """(model, created). The same checkpoint with the same card is the same model of the tenant.

    ``pool``: the sandboxed check waits for its turn there (none: it runs at once).

    Raises:
        AuditInputError: the card or the checkpoint is refused (422).
        SandboxRefused: the sandbox could not check it (503): nothing is registered.
        UploadTooLarge: over the upload limit (413).
        TenantLimitExceeded: the tenant has its ``max_upload_checks`` checks under way (429).
        UploadQueueFull: no check slot came free in time (503).
    """
    card = parse_card(card_raw, kind)
    card_sha = hashlib.sha256(json.dumps({"kind": kind.value, **card}, sort_keys=True).encode()).hexdigest()
    stored = storage.save_upload(stream, filename, max_bytes=config.max_upload_bytes)
    existing = session.scalar(select(Model).where(Model.tenant == tenant, Model.sha256 == stored.sha256,
                                                  Model.card_sha256 == card_sha, Model.kind == kind.value))
    if existing is not None:
        return existing, False
    try:
        if zipfile.is_zipfile(stored.path):  # zip bombs refused from the central directory, before any read
            check_stored_zip(stored.path, Path(filename or "").name or "the checkpoint", card)
        key = (tenant, stored.sha256, card_sha, kind.value, config.sandbox)
        if key not in _seen:
            with pool.turn(tenant, config.tenant_limits.of(tenant)) if pool is not None else nullcontext():
                check_upload(config, stored.path, card, kind=kind, filename=filename)
            _seen.add(key)
    except BaseException:
        in_use = session.scalar(select(func.count()).select_from(Model).where(Model.sha256 == stored.sha256))
        if not in_use:
            stored.path.unlink(missing_ok=True)
        raise
    name = card.get("name") or Path(filename or "").name or stored.sha256[:12]
    model = Model(tenant=tenant, name=str(name)[:200], sha256=stored.sha256, card_sha256=card_sha,
                  format=str(card["format"]), kind=kind.value, size_bytes=stored.size, path=str(stored.path),
                  card=card)
    session.add(model)
    session.flush()
    return model, True


def check_stored_zip(path: Path, name: str, card: dict[str, Any]) -> None:
    """The zip bounds; for an ONNX card also the bundle's member names and types (one model, plain names)."""
    if card.get("format") == "onnx":
        check_bundle(path, name=name)
    else:
        check_zip_archive(path, name=name)


class _Counted:
    """A read stream that raises UploadTooLarge once the parts together pass ``budget[0]`` bytes."""

    def __init__(self, stream: IO[bytes], budget: list[int]) -> None:
        self.stream, self.budget = stream, budget

    def read(self, n: int = -1) -> bytes:
        chunk = self.stream.read(n)
        self.budget[0] -= len(chunk)
        if self.budget[0] < 0:
            raise UploadTooLarge("the checkpoint and its external data exceed the upload limit")
        return chunk


@contextmanager
def bundle_parts(storage: Storage, checkpoint: tuple[str, IO[bytes]], data: list[tuple[str, IO[bytes]]], *,
                 max_bytes: int) -> Iterator[tuple[IO[bytes], str]]:
    """(stream, file name) of a zip of an ONNX checkpoint and its external data parts, written to the
    storage's scratch folder (removed afterwards). The parts together are bounded by ``max_bytes``.

    Raises:
        ModelLoadError: a part's file name is not a plain file name (422).
        UploadTooLarge: over the limit (413).
    """
    budget = [max_bytes]
    tmp_dir = storage.root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
    try:
        with os.fdopen(fd, "w+b") as out:
            write_bundle(out, (checkpoint[0], _Counted(checkpoint[1], budget)),
                         [(n, _Counted(s, budget)) for n, s in data])
            out.seek(0)
            yield out, Path(checkpoint[0]).stem + ".zip"
    finally:
        Path(name).unlink(missing_ok=True)
