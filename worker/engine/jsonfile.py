"""Reading a user's JSON file (a model or generator card) with an error that says what to fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import AuditInputError


def read_json(path: str | Path, *, what: str, error: type[AuditInputError]) -> Any:
    """The parsed file; a missing or unreadable file raises ``error`` naming ``what`` it is."""
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise error(f"{what} not found: {p}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{what} {p} is not readable JSON: {exc}") from None
