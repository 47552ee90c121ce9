"""Pagination of list endpoints: ``page``/``page_size`` in, ``{items, page, page_size, total}`` out."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session


def paginate(session: Session, query: Select[Any], *, page: int, page_size: int) -> dict[str, Any]:
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    items = list(session.scalars(query.limit(page_size).offset((page - 1) * page_size)))
    return {"items": items, "page": page, "page_size": page_size, "total": total}
