"""The checks of each tenant's limits (:mod:`service.tenant_limits`) against the store.

A request over a limit is refused before anything is created: 429 ``tenant_limit`` with a
``Retry-After`` header and ``details.limit`` naming the limit (a schedule that would run more
often than allowed is a 422: retrying does not help). Counting and creating happen in one
transaction that first takes the tenant's row lock (:func:`lock_tenant`), so concurrent
requests of one tenant cannot both slip under a limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .store.models import Audit, AuditStatus, Schedule, TenantUsage, utcnow
from .tenant_limits import TenantLimits

__all__ = ["TenantLimitExceeded", "check_active_audits", "check_schedule_interval", "check_schedules",
           "lock_tenant"]


class TenantLimitExceeded(Exception):
    """A request would take a tenant over one of its limits.

    Args:
        limit: the limit's name (a field of :class:`TenantLimits`).
        allowed: its value.
        current: what the tenant holds now.
        retry_after_s: when trying again may succeed (None: retrying does not help).
        message: what happened, for the client.
    """

    def __init__(self, limit: str, allowed: float, current: float, retry_after_s: float | None,
                 message: str) -> None:
        super().__init__(message)
        self.limit, self.allowed, self.current = limit, allowed, current
        self.retry_after_s, self.message = retry_after_s, message

    @property
    def details(self) -> dict[str, Any]:
        return {"limit": self.limit, "allowed": self.allowed, "current": self.current}


def lock_tenant(session: Session, tenant: str) -> None:
    """Take the tenant's row lock until the transaction ends (the row is made on first use).

    A write, so that on SQLite the transaction takes the database's write lock here, and on
    PostgreSQL concurrent transactions of the same tenant wait for this one's commit: a count
    made after this call stays true until the commit.
    """
    if session.get(TenantUsage, tenant) is None:
        try:
            with session.begin_nested():
                session.add(TenantUsage(tenant=tenant, worker_seconds=0.0, updated_at=utcnow()))
        except IntegrityError:  # made by a concurrent request meanwhile
            pass
    session.execute(update(TenantUsage).where(TenantUsage.tenant == tenant)
                    .values(worker_seconds=TenantUsage.worker_seconds))


def active_audits(session: Session, tenant: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Audit).where(
        Audit.tenant == tenant, Audit.status.in_([AuditStatus.QUEUED.value, AuditStatus.RUNNING.value]))) or 0)


def check_active_audits(session: Session, tenant: str, limits: TenantLimits,
                        retry_after_s: Callable[[], float]) -> None:
    """Raise :class:`TenantLimitExceeded` when one more audit would be over ``max_active_audits``.

    Call it after :func:`lock_tenant`, in the transaction that creates the audit.
    ``retry_after_s`` is asked only for a refusal.
    """
    current = active_audits(session, tenant)
    if current >= limits.max_active_audits:
        raise TenantLimitExceeded(
            "max_active_audits", limits.max_active_audits, current, retry_after_s(),
            f"tenant limit: {current} audits queued or running, at most {limits.max_active_audits} at once; "
            "try again when one has finished")


def enabled_schedules(session: Session, tenant: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Schedule).where(
        Schedule.tenant == tenant, Schedule.enabled.is_(True))) or 0)


def check_schedules(session: Session, tenant: str, limits: TenantLimits) -> None:
    """Raise :class:`TenantLimitExceeded` when one more schedule would be over ``max_schedules``."""
    current = enabled_schedules(session, tenant)
    if current >= limits.max_schedules:
        raise TenantLimitExceeded(
            "max_schedules", limits.max_schedules, current, 3600.0,
            f"tenant limit: {current} schedules, at most {limits.max_schedules}; delete one first")


def check_schedule_interval(interval_s: float, limits: TenantLimits) -> None:
    """Raise :class:`TenantLimitExceeded` (no retry) when a schedule would run more often than allowed."""
    if interval_s < limits.min_schedule_interval_s:
        raise TenantLimitExceeded(
            "min_schedule_interval_s", limits.min_schedule_interval_s, interval_s, None,
            f"tenant limit: the schedule would run every {interval_s:g} s, at least "
            f"{limits.min_schedule_interval_s:g} s apart is allowed")
