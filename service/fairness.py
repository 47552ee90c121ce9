"""Fair scheduling across tenants: whose work a worker takes next.

The broker only delivers: a message is a wake-up that names an audit (the "hint"), and the
worker that gets it asks the store for the fairest work (:func:`service.lifecycle.claim_next`).
Tenants are ranked by

1. how many audits they have running now (fewest first): with several workers, every tenant
   with queued work gets one before any gets a second;
2. their recent worker time (least first): seconds that workers spent on their audits, each
   decaying with a half-life (``ROBUSTAUDIT_FAIR_HALF_LIFE_S``, table ``tenant_usage``),
   charged by every participant's heartbeat;
3. their oldest queued audit (oldest first).

Within a tenant audits go first in, first out. A hint that is running (a copy sent so that
another worker joins the audit, or a re-dispatch for a dead shard holder) is joined when its
tenant ranks first; otherwise the worker starts the fairest queued audit instead. A queued hint
whose message started another audit is sent again (:func:`service.lifecycle.claim_next`), so every
queued audit keeps a message in the broker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .store import Store
from .store.models import Audit, AuditStatus, TenantUsage, utcnow

#: queued audits tried per tenant when the first ones are taken by other workers meanwhile
PER_TENANT = 3


def decayed(seconds: float, since: datetime, now: datetime, half_life_s: float) -> float:
    """``seconds`` recorded at ``since``, as worth at ``now``."""
    age = max(0.0, (now - since).total_seconds())
    return seconds * math.pow(2.0, -age / half_life_s)


def charge(store: Store, tenant: str, seconds: float, *, half_life_s: float, now: datetime | None = None) -> None:
    """Add ``seconds`` of worker time to the tenant's decayed total (an optimistic, guarded update)."""
    if seconds <= 0:
        return
    for _ in range(8):  # a concurrent charge of the same tenant moved updated_at: read again
        now = now or utcnow()
        with store.session() as s:
            row = s.get(TenantUsage, tenant)
            if row is None:
                try:
                    with s.begin_nested():
                        s.add(TenantUsage(tenant=tenant, worker_seconds=seconds, updated_at=now))
                    return
                except IntegrityError:
                    continue
            value = decayed(row.worker_seconds, row.updated_at, now, half_life_s) + seconds
            moved = s.execute(update(TenantUsage).where(TenantUsage.tenant == tenant,
                                                        TenantUsage.updated_at == row.updated_at,
                                                        TenantUsage.worker_seconds == row.worker_seconds)
                              .values(worker_seconds=value, updated_at=max(now, row.updated_at)))
            if moved.rowcount == 1:  # type: ignore[attr-defined]
                return
        now = None


@dataclass(frozen=True)
class TenantRank:
    """Where a tenant stands (see the module docstring for the order).

    Args:
        running: its audits running now.
        usage_s: its decayed worker time.
        queued: its audits queued (and not cancelled).
        oldest: when its oldest queued audit was submitted (None: none queued).
    """

    running: int
    usage_s: float
    queued: int
    oldest: datetime | None

    @property
    def key(self) -> tuple[int, float]:
        return self.running, round(self.usage_s, 3)


def tenant_ranks(session: Session, *, half_life_s: float, now: datetime | None = None) -> dict[str, TenantRank]:
    """Every tenant with queued or running audits, with its rank."""
    now = now or utcnow()
    queued = {t: (n, oldest) for t, n, oldest in session.execute(
        select(Audit.tenant, func.count(), func.min(Audit.created_at))
        .where(Audit.status == AuditStatus.QUEUED.value, Audit.cancel_requested.is_(False))
        .group_by(Audit.tenant)).all()}
    running = dict(session.execute(select(Audit.tenant, func.count())  # type: ignore[arg-type]
                                   .where(Audit.status == AuditStatus.RUNNING.value)
                                   .group_by(Audit.tenant)).all())
    tenants = set(queued) | set(running)
    usage = {row.tenant: decayed(row.worker_seconds, row.updated_at, now, half_life_s)
             for row in session.scalars(select(TenantUsage).where(TenantUsage.tenant.in_(tenants)))}
    return {t: TenantRank(running=int(running.get(t, 0)), usage_s=usage.get(t, 0.0),
                          queued=int(queued.get(t, (0, None))[0]), oldest=queued.get(t, (0, None))[1])
            for t in tenants}


def _order(rank: TenantRank) -> tuple[int, float, float]:
    oldest = rank.oldest.timestamp() if rank.oldest is not None else math.inf
    return (*rank.key, oldest)


def next_candidates(session: Session, hint: str | None, *, half_life_s: float,
                    now: datetime | None = None) -> list[str]:
    """Audit ids for a worker to try to claim, fairest first (a claim can fail: taken meanwhile).

    The queued audits of each tenant (its oldest few, first in first out), tenants in rank order;
    the hint, when it is running (to be joined or taken over), goes before the queued audits of
    its own tenant.
    """
    ranks = tenant_ranks(session, half_life_s=half_life_s, now=now)
    hinted = session.get(Audit, hint) if hint else None
    order: list[str] = []
    for tenant in sorted((t for t, r in ranks.items() if r.queued or (hinted is not None and t == hinted.tenant)),
                         key=lambda t: (_order(ranks[t]), t)):
        if hinted is not None and hinted.tenant == tenant and hinted.status == AuditStatus.RUNNING.value:
            order.append(hinted.id)
        order.extend(session.scalars(
            select(Audit.id).where(Audit.tenant == tenant, Audit.status == AuditStatus.QUEUED.value,
                                   Audit.cancel_requested.is_(False))
            .order_by(Audit.created_at, Audit.id).limit(PER_TENANT)))
    if hinted is not None and hinted.status == AuditStatus.QUEUED.value:
        order.append(hinted.id)  # last: when every fairer one was taken meanwhile
    return list(dict.fromkeys(order))
