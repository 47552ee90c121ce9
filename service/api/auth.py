"""Bearer-token authentication. Tokens are configured (and kept) only as sha256 digests;
each maps to a tenant, and everything a request touches is filtered by that tenant."""

from __future__ import annotations

import hmac
from typing import Any, TypeVar

from flask import current_app, g, request

from ..config import Config, hash_token
from .errors import ApiError

OPEN_TENANT = "default"


def authenticate() -> None:
    """``before_request`` of every /v1 blueprint: sets ``g.tenant`` or answers 401."""
    config: Config = current_app.extensions["robustaudit"].config
    if config.open_mode:
        g.tenant = OPEN_TENANT
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    digest = hash_token(token.strip())
    tenant = next((t for h, t in config.token_hashes.items() if hmac.compare_digest(h, digest)), None)
    if tenant is None:
        raise ApiError(401, "unknown API token")
    g.tenant = tenant


def tenant() -> str:
    return str(g.tenant)


T = TypeVar("T")


def find_owned(session: Any, row_type: type[T], row_id: str) -> T | None:
    """The current tenant's row, or None: another tenant's rows do not exist for this one."""
    row = session.get(row_type, row_id)
    return row if row is not None and row.tenant == tenant() else None


def owned(session: Any, row_type: type[T], row_id: str, noun: str) -> T:
    """The current tenant's row, or 404."""
    row = find_owned(session, row_type, row_id)
    if row is None:
        raise ApiError(404, f"no {noun} {row_id!r}")
    return row
