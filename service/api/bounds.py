"""Bounds on what a client sends, checked at the HTTP boundary before anything costs memory
or reaches the store.

One place for the rules every request obeys:

- strings (JSON keys and values, query arguments, path segments, the headers we read,
  multipart field names, values and file names) never carry NUL or a lone surrogate: a
  database refuses them (PostgreSQL's text has no NUL) and UTF-8 cannot encode them;
- a path component is at most 255 characters and a path at most 4,096 (414);
- a JSON body is at most :data:`MAX_JSON_BYTES` (413, chunked or not) and at most
  :data:`MAX_JSON_DEPTH` levels deep, measured without recursion before it is parsed;
  NaN/Infinity and numbers too long to be an int64 or a double are refused.

:func:`check_request` is the app's ``before_request`` hook; :func:`parse_json_body` is what a
view calls on a JSON body; :class:`BoundedRequest` checks multipart form data when a view
first reads it (after authentication, so an anonymous client cannot make us parse a body).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

from flask import Request, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from worker.engine.jsonfile import json_depth

from .errors import ApiError

MAX_PATH = 4096
MAX_COMPONENT = 255
MAX_QUERY = 4096
MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
#: digits of a JSON number: 20 covers every int64 and every double written in full precision
MAX_NUMBER_CHARS = 40
MAX_IDEMPOTENCY_KEY = 200
INT64_MAX = 2**63 - 1

_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")


def bad_char(value: str) -> str | None:
    """Why ``value`` cannot be stored ("NUL byte", "lone surrogate"), or None when it can."""
    found = _BAD_CHAR.search(value)
    if found is None:
        return None
    return "a NUL byte" if found.group() == "\x00" else "a lone UTF-16 surrogate"


def refuse_string(value: str, where: str, *, status: int = 400) -> None:
    """Raise the ``invalid_string`` error when ``value`` holds NUL or a lone surrogate."""
    reason = bad_char(value)
    if reason is not None:
        raise ApiError(status, f"{where} contains {reason}, which is not allowed in any string",
                       code="invalid_string", field=where)


def _number(text: str) -> int | float:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(text)} characters")
    value = float(text) if any(c in text for c in ".eE") else int(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{text} overflows a double")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _walk(value: Any, root: str) -> Iterator[tuple[str, str]]:
    """(where, string) of every key and string value in ``value``, iteratively."""
    stack: list[tuple[str, Any]] = [(root, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            yield where, node
        elif isinstance(node, dict):
            for key, item in node.items():
                yield f"{where} (a key)", key
                # the key may itself be the bad string: name its place without quoting it
                stack.append((f"{where}.{key if bad_char(key) is None else '?'}", item))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(node))


def refuse_bad_strings(value: Any, root: str, *, status: int = 400) -> None:
    """Raise ``invalid_string`` for the first key or string in ``value`` with NUL or a lone surrogate."""
    for where, text in _walk(value, root):
        refuse_string(text, where, status=status)


def parse_json_body(raw: bytes | str, what: str) -> dict[str, Any]:
    """A client's JSON object, bounded: 413 when too large, 400 ``invalid_json`` when it is
    not JSON, too deep or not an object, 400 ``invalid_string`` for NUL or a lone surrogate."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if len(data) > MAX_JSON_BYTES:
        raise ApiError(413, f"{what} is larger than {MAX_JSON_BYTES} bytes", code="payload_too_large",
                       limit_bytes=MAX_JSON_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"{what} is not UTF-8: {exc.reason} at byte {exc.start}", code="invalid_json") from None
    # measured without recursion (json.loads recurses once per level: RecursionError, a 500)
    if json_depth(text) > MAX_JSON_DEPTH:
        raise ApiError(400, f"{what} nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json",
                       max_depth=MAX_JSON_DEPTH)
    try:
        body = json.loads(text, parse_int=_number, parse_float=_number, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"{what} is not valid JSON: {exc}", code="invalid_json") from None
    except (ValueError, RecursionError) as exc:  # our number limits; RecursionError only past the depth check
        raise ApiError(400, f"{what} is not accepted JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"{what} must be a JSON object", code="invalid_json")
    refuse_bad_strings(body, "body")
    return body


def check_request() -> None:
    """``before_request`` of the app: the path, query and headers of every request, before
    routing errors, authentication or any view (so a 404 for a bad path is a 414/400 too)."""
    path = request.path
    if len(path) > MAX_PATH:
        raise ApiError(414, f"the path is longer than {MAX_PATH} characters", code="uri_too_long",
                       limit=MAX_PATH)
    if any(len(part) > MAX_COMPONENT for part in path.split("/")):
        raise ApiError(414, f"a path component is longer than {MAX_COMPONENT} characters", code="uri_too_long",
                       limit=MAX_COMPONENT)
    if len(request.query_string) > MAX_QUERY:
        raise ApiError(414, f"the query string is longer than {MAX_QUERY} characters", code="uri_too_long",
                       limit=MAX_QUERY)
    refuse_string(path, "the path")
    for key, values in request.args.lists():
        refuse_string(key, "a query argument name")
        for value in values:
            refuse_string(value, f"query argument {key!r}")
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        refuse_string(key, "the Idempotency-Key header")
        if len(key) > MAX_IDEMPOTENCY_KEY:
            raise ApiError(400, f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY} characters",
                           field="Idempotency-Key")
    if request.mimetype == "application/json":
        # A JSON body is small: cap the stream (chunked too) far below the upload limit,
        # so it is refused with 413 before it is read into memory.
        request.max_content_length = min(request.max_content_length or MAX_JSON_BYTES, MAX_JSON_BYTES)


class _MaxStream(LimitedStream):
    """A body of unknown length (chunked) capped at the request's maximum. Werkzeug's own cap
    stops ``read()`` at the limit and hands back the truncated body as if it were all (a JSON
    parse error, 400); this one looks one byte further and answers 413 when there is more."""

    def __init__(self, stream: Any, limit: int) -> None:
        super().__init__(stream, limit, is_max=True)
        self._source = stream

    def readall(self) -> bytes:
        data = super().readall()
        if self.is_exhausted and self._source.read(1):
            raise RequestEntityTooLarge()
        return data


class BoundedRequest(Request):
    """Flask's request, whose multipart fields and file names are checked when first parsed,
    and whose chunked bodies over the limit are refused with 413."""

    @cached_property
    def stream(self) -> Any:
        limit = self.max_content_length
        if (limit is not None and self.content_length is None and "wsgi.input_terminated" in self.environ
                and not self.shallow):
            return _MaxStream(self.environ["wsgi.input"], limit)
        return Request.stream.__get__(self, type(self))  # type: ignore[attr-defined]

    def _load_form_data(self) -> None:
        super()._load_form_data()
        for key, values in self.form.lists():
            _refuse_part_name(key)
            for value in values:
                refuse_string(value, f"form field {key!r}")
        for key, files in self.files.lists():
            _refuse_part_name(key)
            for file in files:
                refuse_string(file.filename or "", f"the file name of part {key!r}")
                if len(file.filename or "") > MAX_COMPONENT:
                    raise ApiError(400, f"the file name of part {key!r} is longer than {MAX_COMPONENT} characters",
                                   code="invalid_multipart", limit=MAX_COMPONENT)


def _refuse_part_name(key: str | None) -> None:
    if not key:  # werkzeug keeps a part whose Content-Disposition has no name under None
        raise ApiError(400, "a multipart part has no name", code="invalid_multipart")
    refuse_string(key, "a multipart part name")
