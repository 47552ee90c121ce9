"""Sending audits to the workers: by task name on the ``gpu`` queue, so the API process never
imports the task module (and its engine) just to enqueue."""

from __future__ import annotations

from typing import Protocol

from celery import Celery

from .lifecycle import mark_dispatched
from .store import Store

QUEUE = "gpu"
TASK_RUN_AUDIT = "robustaudit.run_audit"


class Dispatcher(Protocol):
    """Something that hands an audit id to a worker."""

    def send(self, audit_id: str) -> None: ...


def send_audit(dispatcher: Dispatcher, store: Store, audit_id: str, *, copies: int = 1) -> None:
    """Send ``copies`` messages for the audit (each worker that takes one joins it) and record
    when, so the beat's re-dispatch waits a full interval before it sends again."""
    for _ in range(max(1, copies)):
        dispatcher.send(audit_id)
    mark_dispatched(store, audit_id)


class CeleryDispatcher:
    """Dispatch through a Celery app (its broker connection opens on first send)."""

    def __init__(self, celery_app: Celery) -> None:
        self.celery = celery_app

    def send(self, audit_id: str) -> None:
        self.celery.send_task(TASK_RUN_AUDIT, args=[audit_id], queue=QUEUE)

    def ping(self, timeout: float = 2.0) -> None:
        """Raise when the broker cannot be reached within ``timeout`` seconds."""
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            _ = conn.default_channel  # opens the transport for real (the SQLAlchemy one connects lazily)
