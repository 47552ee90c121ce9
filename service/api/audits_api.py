"""``/v1/audits``: submit (validated before anything is queued), read, list, cancel, report, artifacts."""

from __future__ import annotations

from typing import Any

from flask import request, send_file, url_for
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from worker.engine.datasets import DataRoots

from ..audits import build_request, cancel_audit, create_audit, find_idempotent, request_hash
from ..baselines import with_baseline
from ..dispatch import send_audit
from ..lifecycle import copies, dispatch_failed
from ..queue import estimate, retry_after_active
from ..store.models import Audit
from ..tenants import check_active_audits, lock_tenant
from .auth import authenticate, owned, tenant
from .bounds import parse_json_body
from .context import services
from .errors import RETRY_AFTER_DOC, TENANT_LIMIT_DOC, ApiError
from .models_api import find_model, get_model, upload_model
from .pages import paginate
from .schemas import (
    ArtifactListSchema,
    AuditCreatedSchema,
    AuditPageSchema,
    AuditQuerySchema,
    AuditSchema,
    AuditSummarySchema,
    ErrorSchema,
    audit_request_schema,
)

blp = Blueprint("audits", __name__, url_prefix="/v1/audits", description="Audits: submit, poll, cancel, results")
blp.before_request(authenticate)

REQUEST_DOC = {
    "required": True,
    "content": {
        "application/json": {"schema": "AuditRequest"},
        "multipart/form-data": {"schema": {"type": "object", "required": ["spec", "checkpoint", "card"], "properties": {
            "spec": {"type": "string", "description": "the AuditRequest as JSON, without 'model'"},
            "checkpoint": {"type": "string", "format": "binary"},
            "card": {"type": "string", "format": "binary"},
            "external_data": {"type": "string", "format": "binary",
                              "description": "an ONNX checkpoint's external data file, as in POST /v1/models"}}}},
    },
}


def _read_body() -> tuple[dict[str, Any], str | None]:
    """(body, sha256 of an inline upload). JSON, or multipart with the upload and a 'spec' part."""
    if request.mimetype == "multipart/form-data":
        spec = request.form.get("spec") or (request.files["spec"].read() if "spec" in request.files else None)
        if spec is None:
            raise ApiError(422, "multipart audit: the part 'spec' (the audit request as JSON) is missing")
        body = _json(spec, "the 'spec' part")
        model, _ = upload_model(dict(request.files))
        if "model" in body:
            raise ApiError(422, "a multipart audit carries its model as the 'checkpoint' part; "
                                "leave 'model' out of 'spec'", code="validation_error")
        return {**body, "model": model.id}, model.sha256
    if request.mimetype != "application/json":
        raise ApiError(415, "send the audit as application/json (or multipart/form-data with a checkpoint)")
    return _json(request.get_data(), "the request body"), None


def validated(schema: type[Schema], raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` loaded by ``schema`` (built at request time, so plugin suites are included)."""
    try:
        body: dict[str, Any] = schema().load(raw)
    except ValidationError as exc:
        raise ApiError(422, "the request does not validate: see details.errors", errors=exc.messages) from None
    return body


def load_body(schema: type[Schema]) -> dict[str, Any]:
    """A JSON request body validated by ``schema``; bad JSON is a 400, invalid fields a 422."""
    if request.mimetype != "application/json":
        raise ApiError(415, "send the body as application/json")
    return validated(schema, _json(request.get_data(), "the request body"))


def _json(raw: str | bytes, what: str) -> dict[str, Any]:
    return parse_json_body(raw, what)  # bounded size and depth, no NUL or lone surrogates


def get_audit(session: Any, audit_id: str) -> Audit:
    """The tenant's audit, or 404."""
    return owned(session, Audit, audit_id, "audit")


@blp.route("")
class Audits(MethodView):
    @blp.doc(requestBody=REQUEST_DOC, parameters=[{
        "in": "header", "name": "Idempotency-Key", "required": False, "schema": {"type": "string"},
        "description": "the same key with the same body returns the same audit; with another body, 409"}])
    @blp.response(202, AuditCreatedSchema, headers={"Location": {"schema": {"type": "string"},
                                                                 "description": "the audit's URL"}})
    @blp.alt_response(429, schema=ErrorSchema, headers=RETRY_AFTER_DOC, description=TENANT_LIMIT_DOC)
    def post(self) -> Any:
        """Submit an audit. Everything is validated before it is queued."""
        svc = services()
        key = request.headers.get("Idempotency-Key") or None
        if key is not None and len(key) > 200:
            raise ApiError(400, "Idempotency-Key is longer than 200 characters")
        raw, upload_sha = _read_body()
        body = validated(audit_request_schema(), raw)
        digest = request_hash({"body": raw if upload_sha is None else {**raw, "model": upload_sha}})
        with svc.store.session() as s:
            if key is not None:
                found = find_idempotent(s, tenant(), key)
                if found is not None:
                    return _created_or_conflict(found, digest)
            model = get_model(s, body["model"])
            body = with_baseline(s, tenant(), body, required=True)  # an audit id -> the baseline's values
            req = build_request(body, model, DataRoots(services().config.data_roots),
                                lambda model_id: find_model(s, model_id))
            check_audit_limit(s, tenant())
            try:
                with s.begin_nested():
                    audit = create_audit(s, tenant=tenant(), model=model, request=req, idempotency_key=key,
                                         body_hash=digest)
            except IntegrityError:  # a concurrent request with the same key won the race
                found = find_idempotent(s, tenant(), key or "")
                if found is None:
                    raise
                return _created_or_conflict(found, digest)
        cfg = services().config
        dispatch_or_fail(audit.id, copies(req, fanout=cfg.fanout, shard_size=cfg.shard_size))
        return _created(audit)

    @blp.arguments(AuditQuerySchema, location="query")
    @blp.response(200, AuditPageSchema)
    def get(self, query: dict[str, Any]) -> Any:
        """List the tenant's audits, newest first; filter by status, model and label."""
        q = select(Audit).where(Audit.tenant == tenant())
        if query.get("status") is not None:
            q = q.where(Audit.status == query["status"].value)
        if query.get("model"):
            q = q.where(Audit.model_id == query["model"])
        if query.get("label"):
            q = q.where(Audit.label == query["label"])
        q = q.order_by(Audit.created_at.desc(), Audit.id)
        with services().store.session() as s:
            return paginate(s, q, page=query["page"], page_size=query["page_size"])


def check_audit_limit(session: Any, who: str) -> None:
    """Take the tenant's lock and refuse (429) an audit over its ``max_active_audits``."""
    cfg = services().config
    lock_tenant(session, who)
    check_active_audits(session, who, cfg.tenant_limits.of(who),
                        lambda: retry_after_active(session, who, half_life_s=cfg.fair_half_life_s))


def dispatch_or_fail(audit_id: str, copies: int = 1) -> None:
    """Queue the audit (``copies`` messages: each worker that takes one shares it); if the broker
    cannot take it, the audit fails and the client gets a 503."""
    svc = services()
    try:
        send_audit(svc.dispatcher, svc.store, audit_id, copies=copies)
    except Exception as exc:
        dispatch_failed(svc.store, audit_id, str(exc))
        raise ApiError(503, "the broker is unreachable; the audit was not queued", audit_id=audit_id) from None


def _created(audit: Audit) -> Any:
    return {"id": audit.id, "status": audit.status}, 202, {
        "Location": url_for("audits.AuditById", audit_id=audit.id)}


def _created_or_conflict(audit: Audit, digest: str) -> Any:
    if audit.request_hash != digest:
        raise ApiError(409, "this Idempotency-Key was used with another request body", code="idempotency_conflict",
                       audit_id=audit.id)
    return _created(audit)


@blp.route("/<audit_id>")
class AuditById(MethodView):
    @blp.response(200, AuditSchema)
    def get(self, audit_id: str) -> Any:
        """Status, progress per suite, timestamps; the error if failed; the report and verdict if
        succeeded; while queued, its place in the queue and an estimated start."""
        with services().store.session() as s:
            audit = get_audit(s, audit_id)
            place = estimate(s, audit, half_life_s=services().config.fair_half_life_s)
            # not a column: what the schema's 'queue' reads (null unless queued)
            audit.queue = None if place is None else {  # type: ignore[attr-defined]
                "position": place.position, "estimated_start_at": place.estimated_start_at, "basis": place.basis}
            return audit

    @blp.response(202, AuditSummarySchema)
    def delete(self, audit_id: str) -> Any:
        """Cancel a queued or running audit; a running one stops at its next batch."""
        with services().store.session() as s:
            audit = get_audit(s, audit_id)
            cancel_audit(s, audit)
            return audit


@blp.route("/<audit_id>/report")
class AuditReport(MethodView):
    @blp.response(200, description="the report (api_spec/report.schema.json)")
    def get(self, audit_id: str) -> Any:
        """The report of a succeeded audit (409 while it is not done)."""
        with services().store.session() as s:
            audit = get_audit(s, audit_id)
            if audit.report is None:
                raise ApiError(409, f"audit {audit_id} is {audit.status}; it has no report",
                               code="report_not_ready", audit_status=audit.status)
            return audit.report


@blp.route("/<audit_id>/artifacts")
class AuditArtifacts(MethodView):
    @blp.response(200, ArtifactListSchema)
    def get(self, audit_id: str) -> Any:
        """The files the suites wrote (maps, arrays)."""
        svc = services()
        with svc.store.session() as s:
            get_audit(s, audit_id)
        return {"items": [{"name": name, "size_bytes": size,
                           "url": url_for("audits.AuditArtifact", audit_id=audit_id, name=name)}
                          for name, size in svc.storage.artifacts(audit_id)]}


@blp.route("/<audit_id>/artifacts/<path:name>")
class AuditArtifact(MethodView):
    @blp.response(200, description="the file")
    def get(self, audit_id: str, name: str) -> Any:
        """One artifact file."""
        svc = services()
        with svc.store.session() as s:
            get_audit(s, audit_id)
        handle = svc.storage.open_artifact(audit_id, name)
        if handle is None:
            raise ApiError(404, f"audit {audit_id} has no artifact {name[:300]!r}")
        return send_file(handle, download_name=name.rsplit("/", 1)[-1], as_attachment=False)
