"""The beat: each tick enqueues the audits of due schedules, reaps audits whose workers all died,
and sends again what the broker may have lost (:func:`service.lifecycle.due_for_redispatch`).

Run by ``robustaudit beat`` as a small loop of its own, not by Celery beat: a tick task sent
through the broker would wait behind long audits on busy GPU workers.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from croniter import croniter
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from . import lifecycle
from .audits import create_audit
from .baselines import schedule_run_request
from .config import Config
from .dispatch import Dispatcher, send_audit
from .store import Store
from .store.models import Model, Schedule, utcnow
from .tenant_limits import LimitsTable
from .tenants import TenantLimitExceeded, active_audits, lock_tenant

log = logging.getLogger(__name__)


def as_utc(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time in the store is UTC."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


def next_run(cron: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that ``cron`` (UTC) matches."""
    return as_utc(croniter(cron, as_utc(after)).get_next(datetime))


def valid_cron(cron: str) -> bool:
    return bool(croniter.is_valid(cron))


#: runs of a cron expression looked at to find its shortest interval (a burst shows within them)
INTERVAL_RUNS = 100


def min_interval_s(cron: str, after: datetime) -> float:
    """The shortest time between two consecutive runs of ``cron`` among its next runs after ``after``."""
    it = croniter(cron, as_utc(after))
    runs = [it.get_next(datetime) for _ in range(INTERVAL_RUNS)]
    return min((b - a).total_seconds() for a, b in zip(runs, runs[1:]))


def over_limit(session: Session, tenant: str, limits: LimitsTable) -> TenantLimitExceeded | None:
    """Why one more audit of ``tenant`` (created in this transaction) is over its limit, or None."""
    lock_tenant(session, tenant)
    allowed = limits.of(tenant).max_active_audits
    current = active_audits(session, tenant)
    if current <= allowed:
        return None
    return TenantLimitExceeded("max_active_audits", allowed, current - 1, None,
                               f"tenant limit: {current - 1} audits queued or running, at most {allowed} at once; "
                               "this scheduled run was not queued")


def tick(store: Store, dispatcher: Dispatcher, now: datetime | None = None,
         limits: LimitsTable | None = None) -> list[str]:
    """Enqueue one audit per due schedule; return their ids. Missed runs are not caught up.

    A schedule is claimed with a conditional UPDATE on its ``next_run_at`` so that two beats
    never enqueue the same run twice. A run that would take its tenant over
    ``max_active_audits`` is recorded as failed (``tenant_limit``) instead of queued.
    """
    limits = limits or LimitsTable()
    now = as_utc(now or utcnow())
    created: list[str] = []
    with store.session() as s:
        due = list(s.scalars(select(Schedule).where(Schedule.enabled.is_(True), Schedule.next_run_at <= now)))
    for sched in due:
        over: TenantLimitExceeded | None = None
        with store.session() as s:
            claimed = s.execute(update(Schedule).where(Schedule.id == sched.id,
                                                       Schedule.next_run_at == sched.next_run_at)
                                .values(next_run_at=next_run(sched.cron, now), last_run_at=now))
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                continue
            model = s.get(Model, sched.model_id)
            if model is None:
                continue
            # the run is judged against (and records) the schedule's previous successful run
            audit = create_audit(s, tenant=sched.tenant, model=model, request=schedule_run_request(s, sched),
                                 schedule_id=sched.id)
            over = over_limit(s, sched.tenant, limits)
            if over is not None:  # recorded as a failed run, so the schedule's runs show it
                error = lifecycle.error_body(lifecycle.ErrorCode.TENANT_LIMIT, over.message, **over.details)
                lifecycle.refuse(s, audit.id, error)
        if over is not None:
            log.warning("schedule %s: run %s refused: %s", sched.id, audit.id, over.message)
            continue
        created.append(audit.id)
        try:
            send_audit(dispatcher, store, audit.id, copies=1)
        except Exception:  # the run stays queued in the store; the re-dispatch sends it later
            log.exception("schedule %s: audit %s created, but the broker refused it", sched.id, audit.id)
            continue
        log.info("schedule %s: audit %s enqueued", sched.id, audit.id)
    return created


def reap(store: Store, dispatcher: Dispatcher, config: Config, now: datetime | None = None) -> dict[str, list[str]]:
    """Audits ``running`` with a heartbeat older than the timeout lost their workers: requeued and
    sent again, or failed after ``max_attempts`` (:func:`service.lifecycle.reap`)."""
    out = lifecycle.reap(store, stale_s=config.heartbeat_timeout_s, max_attempts=config.max_attempts,
                         now=as_utc(now or utcnow()))
    for audit_id in out["requeued"]:
        dispatcher.send(audit_id)
    return out


def redispatch(store: Store, dispatcher: Dispatcher, config: Config, now: datetime | None = None) -> list[str]:
    """Send again every audit the broker may have lost: queued and unclaimed for
    ``redispatch_s``, or running with a dead shard holder. Claiming is idempotent, so a copy of
    a message the broker still has costs nothing but a look at the store."""
    sent = []
    for audit_id in lifecycle.due_for_redispatch(store, redispatch_s=config.redispatch_s,
                                                 stale_s=config.heartbeat_timeout_s, now=as_utc(now or utcnow())):
        try:
            dispatcher.send(audit_id)
        except Exception:  # the broker is down: the next tick after redispatch_s tries again
            log.exception("audit %s: re-dispatch failed", audit_id)
            continue
        sent.append(audit_id)
        log.warning("audit %s: sent again (queued or with a dead shard holder for %g s)", audit_id,
                    config.redispatch_s)
    return sent


def run_beat(config: Config, store: Store, dispatcher: Dispatcher, *, once: bool = False) -> None:
    """Tick every ``beat_interval_s`` seconds, aligned to the interval, until interrupted."""
    while True:
        try:
            tick(store, dispatcher, limits=config.tenant_limits)
            reap(store, dispatcher, config)
            redispatch(store, dispatcher, config)
        except Exception:  # a failed tick must not stop the beat; the next one retries
            log.exception("beat tick failed")
        if once:
            return
        time.sleep(config.beat_interval_s - time.time() % config.beat_interval_s)
