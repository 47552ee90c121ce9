"""Where a queued audit stands: its place in the fair order (:mod:`service.fairness`) and when it
should start, for ``GET /v1/audits/{id}`` and for the ``Retry-After`` of a tenant at its limit.

The duration of an audit is, for now, measured: the median run time of recent succeeded audits
with the same suites (or of any recent audits; a default when there are none). The cost model
(``POST /v1/audits/estimate``, issue 18) will replace :meth:`Durations.expected`, the one place
that says how long an audit takes: nothing else here needs to change.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .fairness import tenant_ranks
from .store.models import Audit, AuditStatus, utcnow

#: what an audit is expected to take when none has finished yet
DEFAULT_AUDIT_S = 120.0
#: how many recent succeeded audits the median is taken over
RECENT = 50
#: a Retry-After is at least this (a client must not spin) and at most this (a guess stays a guess)
MIN_RETRY_S, MAX_RETRY_S = 5.0, 3600.0


@dataclass(frozen=True)
class QueueEstimate:
    """A queued audit's place and expected start.

    Args:
        position: 1 = the next audit a free worker takes; counts the queued audits of every
            tenant that the fair order puts before it.
        estimated_start_at: now plus the expected remaining time of the running audits and of
            the audits ahead, over the workers busy now.
        basis: what the durations come from: ``measured`` (recent audits) or ``default``.
    """

    position: int
    estimated_start_at: datetime
    basis: str


def expected_seconds(session: Session, request: dict[str, Any] | None = None) -> tuple[float, str]:
    """(seconds an audit of ``request`` is expected to run, basis): :meth:`Durations.expected`."""
    return Durations.load(session).expected(request)


@dataclass(frozen=True)
class Durations:
    """The run times of recent succeeded audits, read once: (suite names, seconds)."""

    runs: tuple[tuple[tuple[str, ...], float], ...]

    @classmethod
    def load(cls, session: Session) -> Durations:
        rows = session.execute(select(Audit.started_at, Audit.finished_at, Audit.request)
                               .where(Audit.status == AuditStatus.SUCCEEDED.value, Audit.started_at.is_not(None),
                                      Audit.finished_at.is_not(None))
                               .order_by(Audit.finished_at.desc()).limit(RECENT)).all()
        return cls(tuple((_suites(r.request), (r.finished_at - r.started_at).total_seconds()) for r in rows))

    def expected(self, request: dict[str, Any] | None) -> tuple[float, str]:
        """(seconds an audit of ``request`` is expected to run, basis). The place the cost model's
        estimate goes once it is merged; until then the median of the recent succeeded audits
        with the same suites, else of all recent ones, else a default."""
        suites = _suites(request)
        for pool in ([d for s, d in self.runs if s == suites], [d for _, d in self.runs]):
            if pool:
                return max(1.0, statistics.median(pool)), "measured"
        return DEFAULT_AUDIT_S, "default"


def _suites(request: dict[str, Any] | None) -> tuple[str, ...]:
    return tuple(sorted((request or {}).get("suites") or {}))


def _running_left(session: Session, durations: Durations, now: datetime) -> tuple[int, float]:
    """(audits running, their expected seconds left in all)."""
    left, n = 0.0, 0
    for started, request in session.execute(select(Audit.started_at, Audit.request)
                                            .where(Audit.status == AuditStatus.RUNNING.value)).all():
        expected, _ = durations.expected(request)
        elapsed = (now - started).total_seconds() if started is not None else 0.0
        left += max(0.0, expected - elapsed)
        n += 1
    return n, left


def estimate(session: Session, audit: Audit, *, half_life_s: float, now: datetime | None = None
             ) -> QueueEstimate | None:
    """The estimate of a queued audit (None for any other status).

    The fair order alternates between tenants: before the i-th queued audit of its tenant (from
    0) go the i audits of its own tenant ahead of it and, of every other tenant, as many audits
    as it has queued, at most i (one more when that tenant ranks first now).
    """
    if audit.status != AuditStatus.QUEUED.value or audit.cancel_requested:
        return None
    now = now or utcnow()
    ranks = tenant_ranks(session, half_life_s=half_life_s, now=now)
    own = ranks.get(audit.tenant)
    index = int(session.scalar(select(func.count()).select_from(Audit).where(
        Audit.tenant == audit.tenant, Audit.status == AuditStatus.QUEUED.value, Audit.cancel_requested.is_(False),
        (Audit.created_at < audit.created_at)
        | ((Audit.created_at == audit.created_at) & (Audit.id < audit.id)))) or 0)
    ahead = index
    for tenant, rank in ranks.items():
        if tenant == audit.tenant:
            continue
        first = own is None or (rank.key, rank.oldest or now) < (own.key, own.oldest or now)
        ahead += min(rank.queued, index + int(first))
    durations = Durations.load(session)
    expected, basis = durations.expected(audit.request)
    running, left = _running_left(session, durations, now)
    wait = (left + ahead * expected) / max(1, running)
    return QueueEstimate(position=ahead + 1, estimated_start_at=now + timedelta(seconds=wait), basis=basis)


def retry_after_active(session: Session, tenant: str, *, half_life_s: float) -> float:
    """When one of the tenant's queued or running audits is expected to finish, in seconds."""
    now = utcnow()
    expected, _ = expected_seconds(session)
    started = [s for s in session.scalars(select(Audit.started_at).where(
        Audit.tenant == tenant, Audit.status == AuditStatus.RUNNING.value)) if s is not None]
    if started:
        soonest = min(max(0.0, expected - (now - s).total_seconds()) for s in started)
    else:
        first = session.scalar(select(Audit).where(Audit.tenant == tenant, Audit.status == AuditStatus.QUEUED.value)
                               .order_by(Audit.created_at, Audit.id).limit(1))
        guess = estimate(session, first, half_life_s=half_life_s, now=now) if first is not None else None
        soonest = expected + ((guess.estimated_start_at - now).total_seconds() if guess is not None else 0.0)
    return min(MAX_RETRY_S, max(MIN_RETRY_S, soonest))
