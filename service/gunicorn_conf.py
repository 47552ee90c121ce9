"""gunicorn settings of the API (``gunicorn -c python:service.gunicorn_conf 'service.app:create_app()'``).

Threaded workers, so that a slow client holds one thread, not a whole worker: with the sync
worker two clients sending 1 byte/s took both workers and ``/healthz`` went unanswered. Bind and
worker count come from the command line (``robustaudit api --bind --workers``).
"""

from __future__ import annotations

from typing import Any

worker_class = "service.gunicorn_worker.JsonErrorWorker"
threads = 16
# gthread heartbeats from its main loop, not from request threads: this only catches a hung loop
timeout = 60
graceful_timeout = 30
keepalive = 5
# The request line may carry a 4,096-character path plus its query; the app answers 414 past its
# own bounds and gunicorn (with our JSON body) beyond these.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = "-"


def on_starting(server: Any) -> None:
    """In the master, once, before any worker: no upload is in flight, so every ``.part`` file
    is left over from a worker that died mid-upload."""
    from service.config import Config
    from service.storage import Storage

    removed = Storage(Config.from_env().storage_dir).remove_partials()
    if removed:
        server.log.info("removed %d unfinished upload(s) (.part files)", removed)
