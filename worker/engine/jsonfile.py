"""Reading a user's JSON (a model or generator card) with bounds and an error that says what to fix.

``json.loads`` recurses once per nesting level, so a card nested 100,000 deep raises
RecursionError (a 500 upstream); :func:`loads_bounded` measures the depth first, without
recursing, and refuses oversized text before parsing it. Pure standard library (no torch):
the API imports it to validate requests.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from pathlib import Path
from typing import Any

from .errors import AuditInputError

DEFAULT_MAX_DEPTH = 32
#: A card with 100,000 class names of 100 characters is about 10 MB; nothing legitimate is larger.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024

# A JSON string literal: everything between quotes, with backslash escapes (brackets inside don't count).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class JSONBoundsError(ValueError):
    """The text is larger or nested deeper than allowed (a ``ValueError``, like ``JSONDecodeError``)."""


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text``, counted without recursion.

    Brackets inside string literals do not count; unbalanced text still gives its running maximum
    (``json.loads`` then reports the syntax error).
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if not brackets:
        return 0
    return max(0, max(accumulate(_DEPTH_STEP[c] for c in brackets)))


def loads_bounded(raw: str | bytes, *, max_depth: int = DEFAULT_MAX_DEPTH,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """``json.loads`` that refuses text over ``max_bytes`` or nested deeper than ``max_depth``.

    Raises:
        JSONBoundsError: too large or too deep (checked before parsing).
        json.JSONDecodeError: not JSON; UnicodeDecodeError: bytes that are not UTF-8.
    """
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise JSONBoundsError(f"is {size} bytes, above the {max_bytes}-byte limit")
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    depth = json_depth(text)
    if depth > max_depth:
        raise JSONBoundsError(f"is nested {depth} levels deep, above the limit of {max_depth}")
    return json.loads(text)


def read_json(path: str | Path, *, what: str, error: type[AuditInputError],
              max_depth: int = DEFAULT_MAX_DEPTH, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """The parsed file; a missing, oversized, too deep or unreadable file raises ``error``.

    Messages quote the file's name only, never the directory it lies in (a server path).
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise error(f"{what} {p.name} is {size} bytes, above the {max_bytes}-byte limit")
        with p.open("rb") as f:
            raw = f.read(max_bytes + 1)  # the file may have grown since stat()
        return loads_bounded(raw, max_depth=max_depth, max_bytes=max_bytes)
    except FileNotFoundError:
        raise error(f"{what} not found: {p.name}") from None
    except JSONBoundsError as exc:
        raise error(f"{what} {p.name} {exc}") from None
    # ValueError besides JSONDecodeError: json.loads refuses integers of more than 4,300 digits with it.
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{what} {p.name} is not readable JSON: {str(exc)[:200]}") from None
