"""One JSON error body for every 4xx and 5xx: ``{status, code, message, details}``."""

from __future__ import annotations

import logging
import math
from typing import Any

from flask import Flask, Response, jsonify
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from worker.engine.errors import AuditInputError

from ..tenants import TenantLimitExceeded
from .schemas import ErrorSchema

log = logging.getLogger(__name__)

#: HTTP status -> the default machine-readable code.
CODES: dict[int, str] = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "payload_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
    417: "expectation_failed", 422: "validation_error", 429: "too_many_requests", 431: "header_fields_too_large",
    500: "internal_error", 501: "not_implemented", 503: "unavailable",
}


class ApiError(Exception):
    """An error with its status, code and message, raised anywhere in a request."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 headers: dict[str, str] | None = None, **details: Any) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.code = code or CODES.get(status, "error")
        self.details = details
        self.headers = dict(headers or {})


def error_body(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The error body; ``details`` is always there (an empty object when there are none), so
    clients can read it without a check."""
    return {"status": status, "code": code, "message": message, "details": dict(details or {})}


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> Response:
    resp = jsonify(error_body(status, code, message, details))
    resp.status_code = status
    return resp


def retry_after(seconds: float) -> dict[str, str]:
    """The ``Retry-After`` header: whole seconds, at least 1."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


#: the OpenAPI description of a Retry-After header
RETRY_AFTER_DOC = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait before retrying"}}
TENANT_LIMIT_DOC = ("tenant_limit: the tenant is at one of its limits (details.limit names it); "
                    "nothing was created")


def limit_response(exc: TenantLimitExceeded) -> Response:
    """429 ``tenant_limit`` with ``Retry-After``; 422 when retrying cannot help (no retry time)."""
    if exc.retry_after_s is None:
        return error_response(422, "tenant_limit", exc.message, exc.details)
    resp = error_response(429, "tenant_limit", exc.message, exc.details)
    resp.headers.update(retry_after(exc.retry_after_s))
    return resp


class RobustauditApi(Api):
    """flask-smorest's Api with our error body for every HTTPException (webargs' 422s included)."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        status = error.code or 500
        data = getattr(error, "data", None) or {}
        details: dict[str, Any] = {}
        errors = data.get("errors") or data.get("messages")
        if errors:
            details["errors"] = errors
        if status >= 500:
            log.error("internal error", exc_info=getattr(error, "original_exception", None))
            message = "internal error; the incident was logged"
        else:
            message = data.get("message") or error.description or error.name
            if status == 422 and errors:
                message = "the request does not validate: see details.errors"
        resp = error_response(status, CODES.get(status, "error"), message, details)
        for key, value in (data.get("headers") or {}).items():
            resp.headers[key] = value
        return resp


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        resp = error_response(exc.status, exc.code, exc.message, exc.details)
        resp.headers.update(exc.headers)
        return resp

    @app.errorhandler(TenantLimitExceeded)
    def _tenant_limit(exc: TenantLimitExceeded) -> Response:
        return limit_response(exc)

    @app.errorhandler(AuditInputError)
    def _input_error(exc: AuditInputError) -> Response:
        return error_response(422, exc.code, exc.message, exc.details)
