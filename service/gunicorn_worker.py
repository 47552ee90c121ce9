"""gunicorn's threaded worker, answering the errors gunicorn raises itself (a request line
too long, a bad request line, headers too large or malformed) with the API's JSON error body
instead of gunicorn's HTML page.

gunicorn decides the status of such an error in ``Worker.handle_error``; we let it decide (and
log) as it does, capture the page it would write, and write our body with that status.
"""

from __future__ import annotations

import functools
import json
import re
import socket
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ([^\r\n]*)\r\n")
MAX_MESSAGE = 300
#: a client silent for this long while we read its body or send it an answer is dropped, so a
#: stalled connection gives its thread back (werkzeug reports the body read as a disconnect)
IO_TIMEOUT_S = 60.0


class _Capture:
    """Stands in for the client socket while gunicorn writes its error page: keeps the bytes,
    lends everything else (address, access log) from the real socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.data = bytearray()

    def gettimeout(self) -> float:
        return 0.0  # gunicorn then writes straight through, without toggling blocking mode

    def sendall(self, data: bytes) -> None:
        self.data += data

    def send(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def json_error_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 response carrying the JSON error body; the connection is closed after it."""
    # imported here: the gunicorn master loads this module and need not import the app's modules
    from .api.errors import CODES, error_body

    code = CODES.get(status, "bad_request" if 400 <= status < 500 else "internal_error")
    body = json.dumps(error_body(status, code, message[:MAX_MESSAGE])).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


#: what a closing connection reads and discards (for at most gunicorn's 2 s) before it closes:
#: an upload refused early (413) is still arriving, and closing with unread data would reset the
#: connection and lose the answer; gunicorn's own 64 KiB is less than one upload's first second
DRAIN_BYTES = 64 << 20


class JsonErrorWorker(ThreadWorker):
    """``gthread`` with JSON error bodies; select it with ``worker_class`` in the gunicorn config."""

    def init_process(self) -> None:
        close_graceful = util.close_graceful
        if not isinstance(close_graceful, functools.partial):  # this worker process's own gunicorn
            util.close_graceful = functools.partial(close_graceful, max_drain=DRAIN_BYTES)  # type: ignore[assignment]
        super().init_process()

    def handle_request(self, req: Any, conn: Any) -> Any:
        # gthread reads bodies in blocking mode with no timeout: bound each socket operation
        conn.sock.settimeout(IO_TIMEOUT_S)
        return super().handle_request(req, conn)

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        capture = _Capture(client)
        super().handle_error(req, capture, addr, exc)  # type: ignore[arg-type]
        found = _STATUS_LINE.match(bytes(capture.data))
        status, reason = (int(found.group(1)), found.group(2).decode("latin-1")) if found else (
            500, "Internal Server Error")
        # gunicorn's own text for client errors says what was wrong; a 500 says nothing more
        message = f"{reason}: {exc}" if 400 <= status < 500 else "internal error; the incident was logged"
        try:
            util.write_nonblock(client, json_error_response(status, reason, message))
        except OSError:
            self.log.debug("could not send the error response")
