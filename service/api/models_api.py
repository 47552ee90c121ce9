"""``/v1/models``: upload a checkpoint with its card; list and read registered models."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import select
from werkzeug.datastructures import FileStorage

from ..sandboxing import SandboxRefused
from ..storage import UploadTooLarge
from ..store.models import Model, ModelKind
from ..upload_checks import UploadCheckPool, UploadQueueFull
from ..uploads import bundle_parts, parse_card, register_model
from .auth import authenticate, find_owned, owned, tenant
from .context import services
from .errors import RETRY_AFTER_DOC, TENANT_LIMIT_DOC, ApiError, retry_after
from .pages import paginate
from .schemas import ErrorSchema, ModelPageSchema, ModelSchema, ModelUploadSchema, PageQuerySchema

#: one byte more than a card may have, so an oversized card is seen as such
MAX_CARD_READ = 4 * 1024 * 1024 + 1
#: data files an ONNX checkpoint may come with as 'external_data' parts
MAX_EXTERNAL_DATA_PARTS = 16

blp = Blueprint("models", __name__, url_prefix="/v1/models", description="Registered models (checkpoint + card)")
blp.before_request(authenticate)


def upload_model(files: dict[str, Any]) -> tuple[Model, bool]:
    """Register the multipart parts 'checkpoint' and 'card' (a file, or a form field holding JSON), and
    for an ONNX checkpoint the data files its tensors name, as 'external_data' parts."""
    svc = services()
    checkpoint = files.get("checkpoint")
    card: FileStorage | str | None = files.get("card") or request.form.get("card")
    if not isinstance(checkpoint, FileStorage):
        raise ApiError(422, "multipart part 'checkpoint' (the checkpoint file) is missing", code="validation_error")
    if card is None:
        raise ApiError(422, "multipart part 'card' (the model card JSON) is missing", code="validation_error")
    raw_kind = request.form.get("kind") or ModelKind.CLASSIFIER.value
    try:
        kind = ModelKind(raw_kind)
    except ValueError:
        raise ApiError(422, f"multipart part 'kind' must be one of {[k.value for k in ModelKind]}",
                       code="validation_error", errors={"kind": ["unknown kind"]}) from None
    card_raw = card.read(MAX_CARD_READ) if isinstance(card, FileStorage) else card
    data = external_data_parts()
    cfg = svc.config
    pool = UploadCheckPool(svc.store, slots=cfg.upload_checks, wait_s=cfg.upload_queue_s, check_s=cfg.upload_check_s)
    try:
        with svc.store.session() as s:
            if not data:
                return register_model(s, svc.storage, svc.config, tenant=tenant(), stream=checkpoint.stream,
                                      filename=checkpoint.filename or "", card_raw=card_raw, kind=kind, pool=pool)
            _require_onnx_card(card_raw, kind)
            with bundle_parts(svc.storage, (checkpoint.filename or "", checkpoint.stream),
                              [(d.filename or "", d.stream) for d in data],
                              max_bytes=svc.config.max_upload_bytes) as (bundle, name):
                return register_model(s, svc.storage, svc.config, tenant=tenant(), stream=bundle,
                                      filename=name, card_raw=card_raw, kind=kind, pool=pool)
    except UploadQueueFull as exc:
        raise ApiError(503, f"every upload check slot stayed busy for {exc.waited_s:g} s; nothing was registered",
                       code="upload_queue_full", headers=retry_after(exc.retry_after_s),
                       waited_s=exc.waited_s) from None
    except UploadTooLarge:
        raise ApiError(413, f"the checkpoint exceeds ROBUSTAUDIT_MAX_UPLOAD_MB={svc.config.max_upload_mb:g}") from None
    except SandboxRefused as exc:
        # fail closed: a model the sandbox could not check is not registered
        status = 503 if exc.code == "sandbox_unavailable" else 422
        raise ApiError(status, f"the checkpoint could not be checked in the sandbox: {exc.message}",
                       code=exc.code) from None


def external_data_parts() -> list[FileStorage]:
    """The 'external_data' parts of the request (none for a checkpoint that carries its weights)."""
    parts = [p for p in request.files.getlist("external_data") if isinstance(p, FileStorage)]
    if len(parts) > MAX_EXTERNAL_DATA_PARTS:
        raise ApiError(422, f"at most {MAX_EXTERNAL_DATA_PARTS} 'external_data' parts are accepted",
                       code="validation_error")
    return parts


def _require_onnx_card(card_raw: bytes | str, kind: ModelKind) -> None:
    """'external_data' belongs to an ONNX checkpoint: refused before anything is stored for another format."""
    if kind is not ModelKind.CLASSIFIER or parse_card(card_raw, kind).get("format") != "onnx":
        raise ApiError(422, "multipart part 'external_data' is accepted only with an ONNX checkpoint "
                            "(model card 'format': 'onnx') of a classifier", code="validation_error")


@blp.route("")
class Models(MethodView):
    @blp.arguments(ModelUploadSchema, location="files")
    @blp.response(201, ModelSchema, description="registered (200 when the same checkpoint and card exist)")
    @blp.alt_response(200, schema=ModelSchema, description="already registered: the existing model")
    @blp.alt_response(429, schema=ErrorSchema, headers=RETRY_AFTER_DOC, description=TENANT_LIMIT_DOC)
    @blp.alt_response(503, schema=ErrorSchema, headers=RETRY_AFTER_DOC, description=(
        "upload_queue_full: no upload check slot came free in time; sandbox_unavailable: the sandbox cannot run"))
    def post(self, files: dict[str, Any]) -> Any:
        """Upload a checkpoint and its model card (multipart).

        The checkpoint is streamed to storage, its sha256 computed, and it is loaded with its
        card to check that it is a model we accept; identical uploads return the same model.
        """
        model, created = upload_model(files)
        return model, 201 if created else 200

    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, ModelPageSchema)
    def get(self, query: dict[str, Any]) -> Any:
        """List the tenant's models, newest first."""
        q = select(Model).where(Model.tenant == tenant()).order_by(Model.created_at.desc(), Model.id)
        with services().store.session() as s:
            return paginate(s, q, **query)


@blp.route("/<model_id>")
class ModelById(MethodView):
    @blp.response(200, ModelSchema)
    def get(self, model_id: str) -> Any:
        """One model."""
        with services().store.session() as s:
            return get_model(s, model_id)


def find_model(session: Any, model_id: str) -> Model | None:
    """The tenant's model, or None."""
    return find_owned(session, Model, model_id)


def get_model(session: Any, model_id: str) -> Model:
    """The tenant's model, or 404."""
    return owned(session, Model, model_id, "model")
