"""Baselines over the API: an earlier audit of the tenant whose report gates compare with.

``"baseline": AUDIT_ID`` in an audit request is resolved here, when the request is accepted,
into the engine's :class:`~worker.engine.gates.Baseline` (the baseline's values of the metrics
its gates name, and the audit id), so the stored request says what it was judged against
and the worker needs no access to other audits. A schedule's run without a fixed baseline is
compared with the schedule's previous successful run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.engine.gates import Baseline, Gate, baseline_gates

from .api.errors import ApiError
from .store.models import Audit, AuditStatus, Schedule


def _gates(raw: Any) -> list[Gate]:
    return [Gate.parse(g) for g in raw] if isinstance(raw, list) else []


def tenant_audit(session: Session, tenant: str, audit_id: str) -> Audit | None:
    audit = session.get(Audit, audit_id)
    return audit if audit is not None and audit.tenant == tenant else None


def baseline_audit(session: Session, tenant: str, audit_id: str) -> Audit:
    """The tenant's succeeded audit ``audit_id``: unknown is a 422, not finished a 409."""
    audit = tenant_audit(session, tenant, audit_id)
    if audit is None:
        raise ApiError(422, f"baseline: no audit {audit_id[:64]!r} (an audit id of yours)", code="validation_error",
                       errors={"baseline": [f"no audit {audit_id[:64]!r}"]})
    if audit.status != AuditStatus.SUCCEEDED.value or audit.report is None:
        raise ApiError(409, f"baseline audit {audit.id} is {audit.status}; only a succeeded audit can be a baseline",
                       code="baseline_not_ready", audit_id=audit.id, audit_status=audit.status)
    return audit


def baseline_of(audit: Audit, gates: list[Gate], source: str | None = None) -> dict[str, Any]:
    """The engine's baseline (a JSON object) from a succeeded audit, for ``gates``."""
    if audit.report is None:
        raise ValueError(f"audit {audit.id} has no report")  # callers pass succeeded audits
    return Baseline.from_report(audit.report, baseline_gates(gates), source=source or f"audit {audit.id}",
                                audit_id=audit.id).to_dict()


def with_baseline(session: Session, tenant: str, body: Mapping[str, Any], *, required: bool) -> dict[str, Any]:
    """``body`` with ``baseline`` (an audit id) resolved into the engine's baseline.

    ``required``: gates written against a baseline need one (an audit); a schedule may leave it
    out, and each run then compares with the schedule's previous successful run.
    """
    out = dict(body)
    gates = _gates(body.get("gates"))
    ref = body.get("baseline")
    if ref is not None:
        out["baseline"] = baseline_of(baseline_audit(session, tenant, str(ref)), gates)
        return out
    out.pop("baseline", None)
    needing = baseline_gates(gates)
    if needing and required:
        raise ApiError(422, f"gate '{needing[0]}' is written against a baseline, but the request names none: add "
                            "\"baseline\": AUDIT_ID (a succeeded audit of yours)", code="validation_error",
                       errors={"baseline": ["required by the gates written against a baseline"]})
    return out


def previous_run(session: Session, schedule_id: str) -> Audit | None:
    """The schedule's latest succeeded run."""
    found: Audit | None = session.scalar(
        select(Audit).where(Audit.schedule_id == schedule_id, Audit.status == AuditStatus.SUCCEEDED.value)
        .order_by(Audit.created_at.desc(), Audit.id.desc()).limit(1))
    return found


def schedule_run_request(session: Session, sched: Schedule) -> dict[str, Any]:
    """The request of a schedule's next run: its own, with the previous successful run as the
    baseline unless the schedule names a fixed one (none before the first success)."""
    request = dict(sched.request)
    if request.get("baseline") is None:
        before = previous_run(session, sched.id)
        request["baseline"] = None if before is None else baseline_of(
            before, _gates(request.get("gates")), source=f"audit {before.id} (the schedule's previous successful run)")
    return request
