"""The beat: each tick enqueues the audits of due schedules and reaps audits whose worker died.

Run by ``robustaudit beat`` as a small loop of its own, not by Celery beat: a tick task sent
through the broker would wait behind long audits on busy GPU workers.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

from croniter import croniter
from sqlalchemy import select, update

from .audits import create_audit
from .config import Config
from .dispatch import Dispatcher
from .store import Store
from .store.models import Audit, AuditStatus, Model, Schedule, utcnow

log = logging.getLogger(__name__)


def as_utc(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time in the store is UTC."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


def next_run(cron: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that ``cron`` (UTC) matches."""
    return as_utc(croniter(cron, as_utc(after)).get_next(datetime))


def valid_cron(cron: str) -> bool:
    return bool(croniter.is_valid(cron))


def tick(store: Store, dispatcher: Dispatcher, now: datetime | None = None) -> list[str]:
    """Enqueue one audit per due schedule; return their ids. Missed runs are not caught up.

    A schedule is claimed with a conditional UPDATE on its ``next_run_at`` so that two beats
    never enqueue the same run twice.
    """
    now = as_utc(now or utcnow())
    created: list[str] = []
    with store.session() as s:
        due = list(s.scalars(select(Schedule).where(Schedule.enabled.is_(True), Schedule.next_run_at <= now)))
    for sched in due:
        with store.session() as s:
            claimed = s.execute(update(Schedule).where(Schedule.id == sched.id,
                                                       Schedule.next_run_at == sched.next_run_at)
                                .values(next_run_at=next_run(sched.cron, now), last_run_at=now))
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                continue
            model = s.get(Model, sched.model_id)
            if model is None:
                continue
            audit = create_audit(s, tenant=sched.tenant, model=model, request=dict(sched.request),
                                 schedule_id=sched.id)
        dispatcher.send(audit.id)
        created.append(audit.id)
        log.info("schedule %s: audit %s enqueued", sched.id, audit.id)
    return created


def reap(store: Store, dispatcher: Dispatcher, config: Config, now: datetime | None = None) -> dict[str, list[str]]:
    """Audits ``running`` with a heartbeat older than the timeout lost their worker: requeue them,
    or fail them after ``max_attempts``. Returns {"requeued": [...], "failed": [...]}."""
    now = as_utc(now or utcnow())
    cutoff = now - timedelta(seconds=config.heartbeat_timeout_s)
    out: dict[str, list[str]] = {"requeued": [], "failed": []}
    with store.session() as s:
        stale = list(s.scalars(select(Audit).where(Audit.status == AuditStatus.RUNNING.value,
                                                   Audit.heartbeat_at < cutoff)))
    for audit in stale:
        outcome, values = _reaped(audit, config, now)
        with store.session() as s:
            done = s.execute(update(Audit).where(Audit.id == audit.id, Audit.status == AuditStatus.RUNNING.value,
                                                 Audit.heartbeat_at == audit.heartbeat_at).values(**values))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            continue
        out.setdefault(outcome, []).append(audit.id)
        if outcome == "requeued":
            dispatcher.send(audit.id)
        log.warning("audit %s: worker lost (heartbeat %s); %s", audit.id, audit.heartbeat_at, outcome)
    return out


def _reaped(audit: Audit, config: Config, now: datetime) -> tuple[str, dict[str, object]]:
    """What becomes of a dead worker's audit: cancelled if that was asked, failed after
    ``max_attempts``, else queued again."""
    if audit.cancel_requested:
        return "cancelled", {"status": AuditStatus.CANCELLED.value, "finished_at": now,
                             "error": {"code": "cancelled", "message": "the audit was cancelled"}}
    if audit.attempts >= config.max_attempts:
        return "failed", {"status": AuditStatus.FAILED.value, "finished_at": now, "error": {
            "code": "worker_lost", "message": f"the worker died during {audit.attempts} attempt(s); giving up"}}
    return "requeued", {"status": AuditStatus.QUEUED.value, "worker": None}


def run_beat(config: Config, store: Store, dispatcher: Dispatcher, *, once: bool = False) -> None:
    """Tick every ``beat_interval_s`` seconds, aligned to the interval, until interrupted."""
    while True:
        try:
            tick(store, dispatcher)
            reap(store, dispatcher, config)
        except Exception:  # a failed tick must not stop the beat; the next one retries
            log.exception("beat tick failed")
        if once:
            return
        time.sleep(config.beat_interval_s - time.time() % config.beat_interval_s)
