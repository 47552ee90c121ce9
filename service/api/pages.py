"""Pagination of list endpoints: ``page``/``page_size`` in, ``{items, page, page_size, total}`` out."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from .errors import ApiError
from .schemas import INT64_MAX


def paginate(session: Session, query: Select[Any], *, page: int, page_size: int) -> dict[str, Any]:
    """One page of ``query``. The schemas bound ``page`` and ``page_size``; the offset is checked
    here as well because a database answers an offset past int64 with an error, not a page."""
    offset = (page - 1) * page_size
    if page < 1 or page_size < 1 or offset + page_size > INT64_MAX:
        raise ApiError(422, "page and page_size must be positive and page * page_size must fit an int64",
                       errors={"page": ["out of range"]})
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    items = list(session.scalars(query.limit(page_size).offset(offset)))
    return {"items": items, "page": page, "page_size": page_size, "total": total}
