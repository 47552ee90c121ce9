"""The one owner of an audit's state: statuses, error codes, the allowed transitions, and every
write of ``Audit.status`` as a guarded conditional UPDATE.

An attempt starts when a worker claims a queued audit (or takes over one whose heartbeat is
stale): it gets a fresh claim token, ``Audit.holder``. Other workers that take a copy of the
same task join the attempt (same token, their own member id) and share its shards
(:class:`~service.store.models.ShardClaim`). Every write of a participant is guarded by the
token, so a worker whose attempt was reaped and taken over writes nothing any more: not a
heartbeat, not a result.

The store is the source of truth, the broker only delivers: :func:`due_for_redispatch` finds
audits that a lost message left behind, and claiming is idempotent, so a duplicate is harmless.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import fairness
from .store import Store
from .store.models import Audit, AuditStatus, ShardClaim, utcnow

log = logging.getLogger(__name__)

__all__ = ["AuditStatus", "ErrorCode", "Participation", "TRANSITIONS"]


class ErrorCode(str, Enum):
    """The service's own error codes of a failed or cancelled audit (the engine's input errors,
    e.g. ``dataset_error``, keep the engine's code)."""

    CANCELLED = "cancelled"
    BROKER_UNAVAILABLE = "broker_unavailable"
    WORKER_LOST = "worker_lost"
    TIME_LIMIT = "time_limit"
    INTERNAL_ERROR = "internal_error"
    SANDBOX_UNAVAILABLE = "sandbox_unavailable"
    SANDBOX_TIMEOUT = "sandbox_timeout"
    SANDBOX_FAILED = "sandbox_failed"
    SANDBOX_LIMIT = "sandbox_limit"
    TENANT_LIMIT = "tenant_limit"
    #: what the sandboxed model caused (messages written by us: service/sandboxing.py)
    MODEL_OUT_OF_MEMORY = "model_out_of_memory"
    MODEL_LOAD_ERROR = "model_load_error"
    MODEL_RUNTIME_ERROR = "model_runtime_error"


_Q, _R = AuditStatus.QUEUED, AuditStatus.RUNNING
#: from -> the statuses it may go to; a finished audit never changes again
TRANSITIONS: Mapping[AuditStatus, frozenset[AuditStatus]] = {
    _Q: frozenset({_R, AuditStatus.CANCELLED, AuditStatus.FAILED}),  # claim, cancel, dispatch failure, refusal
    _R: frozenset({_R, _Q, AuditStatus.SUCCEEDED, AuditStatus.FAILED, AuditStatus.CANCELLED}),  # takeover, reap
    AuditStatus.SUCCEEDED: frozenset(),
    AuditStatus.FAILED: frozenset(),
    AuditStatus.CANCELLED: frozenset(),
}


def allowed(source: AuditStatus, target: AuditStatus) -> bool:
    return target in TRANSITIONS[source]


def error_body(code: ErrorCode | str, message: str, **details: Any) -> dict[str, Any]:
    """The stored ``Audit.error``: {code, message[, details]}."""
    body: dict[str, Any] = {"code": code.value if isinstance(code, ErrorCode) else str(code), "message": message}
    if details:
        body["details"] = details
    return body


def _move(s: Session, audit_id: str, target: AuditStatus, sources: Iterable[AuditStatus], *guards: Any,
          **values: Any) -> bool:
    """``UPDATE audits SET status=target ... WHERE id AND status IN sources AND guards``; True if it moved."""
    sources = tuple(sources)
    for source in sources:
        assert allowed(source, target), f"{source.value} -> {target.value} is not a transition"
    result = s.execute(update(Audit).where(Audit.id == audit_id, Audit.status.in_([x.value for x in sources]), *guards)
                       .values(status=target.value, **values))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Participation:
    """One worker's part in one attempt of an audit.

    Args:
        audit_id: the audit.
        holder: the attempt's claim token (``Audit.holder``); every write is guarded by it.
        member: this participant's own id (it holds shard claims and the finalize grant).
        fresh: this participant started the attempt (the others joined it).
    """

    audit_id: str
    holder: str
    member: str
    fresh: bool


def _token() -> str:
    return uuid.uuid4().hex


def _current(p: Participation) -> tuple[Any, ...]:
    return (Audit.holder == p.holder, Audit.status == _R.value)


def _held(p: Participation) -> Any:
    return Audit.holder == p.holder


def claim(store: Store, audit_id: str, *, worker: str, stale_s: float) -> Participation | None:
    """Start an attempt (queued, or running with a stale heartbeat), or join the running one.

    None when there is nothing to do: finished, cancelled, or gone.
    """
    now, token = utcnow(), _token()
    stale = now - timedelta(seconds=stale_s)
    with store.session() as s:
        if _move(s, audit_id, _R, (_Q, _R), Audit.cancel_requested.is_(False),
                 or_(Audit.status == _Q.value, Audit.heartbeat_at < stale),
                 started_at=now, heartbeat_at=now, worker=worker[:200], holder=token, finalizer=None,
                 attempts=Audit.attempts + 1, error=None):
            # the shards the lost attempt held are free: its members write nothing any more
            s.execute(update(ShardClaim).where(ShardClaim.audit_id == audit_id, ShardClaim.done.is_(False))
                      .values(holder=None))
            return Participation(audit_id, token, _token(), fresh=True)
        audit = s.get(Audit, audit_id)
        if audit is None or audit.status != _R.value or audit.cancel_requested or audit.holder is None:
            return None
        return Participation(audit_id, audit.holder, _token(), fresh=False)


def claim_next(store: Store, hint: str | None, *, worker: str, stale_s: float, half_life_s: float,
               resend: Callable[[str], None] | None = None) -> Participation | None:
    """Claim the fairest work across tenants (:mod:`service.fairness`): a delivered message is a
    wake-up, ``hint`` the audit it names. Each candidate goes through :func:`claim`, so two
    workers never start one attempt twice; None when nothing is left to do.

    When another audit is started and the hint is still queued, the hint's message was spent on
    that audit: ``resend`` sends the hint again (the started audit's own message may later join
    it rather than start the hint), so every queued audit keeps a message in the broker.
    """
    with store.session() as s:
        candidates = fairness.next_candidates(s, hint, half_life_s=half_life_s)
    for audit_id in candidates:
        part = claim(store, audit_id, worker=worker, stale_s=stale_s)
        if part is not None:
            if hint is not None and part.audit_id != hint and part.fresh and resend is not None:
                _resend_if_queued(store, hint, resend)
            return part
    return None


def _resend_if_queued(store: Store, audit_id: str, resend: Callable[[str], None]) -> None:
    with store.session() as s:
        queued = s.scalar(select(func.count()).select_from(Audit).where(
            Audit.id == audit_id, Audit.status == _Q.value, Audit.cancel_requested.is_(False)))
    if not queued:
        return
    try:
        resend(audit_id)
    except Exception:  # the broker is down: the beat's re-dispatch sends it later
        log.exception("audit %s: its message went to a fairer audit and could not be sent again", audit_id)


def is_current(store: Store, p: Participation) -> bool:
    """The attempt is still ours to work on: running, not cancelled, not taken over."""
    with store.session() as s:
        audit = s.get(Audit, p.audit_id)
        return (audit is not None and audit.status == _R.value and audit.holder == p.holder
                and not audit.cancel_requested)


def heartbeat(store: Store, p: Participation, progress: Mapping[str, float] | None = None) -> bool:
    """Touch the audit's heartbeat (and progress) and those of the shards this member holds."""
    now = utcnow()
    values: dict[str, Any] = {"heartbeat_at": now}
    if progress is not None:
        values["progress"] = dict(progress)
    with store.session() as s:
        result = s.execute(update(Audit).where(Audit.id == p.audit_id, *_current(p)).values(**values))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        s.execute(update(ShardClaim).where(ShardClaim.audit_id == p.audit_id, ShardClaim.holder == p.member,
                                           ShardClaim.done.is_(False)).values(heartbeat_at=now))
    return True


def grant_shard(store: Store, p: Participation, *, key: str, suite: str, index: int, of: int,
                stale_s: float) -> bool:
    """Give shard ``key`` to this member if the attempt is current and the shard is free, held by
    a member whose heartbeat is stale, or marked done although (the caller checked) its partial is
    not saved. Asking again for a shard one holds is granted."""
    now = utcnow()
    stale = now - timedelta(seconds=stale_s)
    with store.session() as s:
        if s.scalar(select(func.count()).select_from(Audit).where(
                Audit.id == p.audit_id, *_current(p), Audit.cancel_requested.is_(False))) != 1:
            return False
    try:
        with store.session() as s:
            s.add(ShardClaim(audit_id=p.audit_id, key=key, suite=suite, index=index, of=of, holder=p.member,
                             heartbeat_at=now, done=False))
        return True
    except IntegrityError:  # someone claimed it before: take it over only if its holder is dead
        pass
    with store.session() as s:
        result = s.execute(update(ShardClaim).where(
            ShardClaim.audit_id == p.audit_id, ShardClaim.key == key,
            or_(ShardClaim.done.is_(True), ShardClaim.holder.is_(None), ShardClaim.holder == p.member,
                ShardClaim.heartbeat_at < stale))
            .values(holder=p.member, heartbeat_at=now, done=False))
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def mark_done(store: Store, audit_id: str, keys: Iterable[str]) -> None:
    """Shards whose partial the caller found saved in the checkpoint folder."""
    keys = list(keys)
    if not keys:
        return
    with store.session() as s:
        s.execute(update(ShardClaim).where(ShardClaim.audit_id == audit_id, ShardClaim.key.in_(keys),
                                           ShardClaim.done.is_(False)).values(done=True))


def held_shards(store: Store, p: Participation) -> list[str]:
    """Keys of the shards this member holds and has not finished."""
    with store.session() as s:
        return list(s.scalars(select(ShardClaim.key).where(ShardClaim.audit_id == p.audit_id,
                                                           ShardClaim.holder == p.member,
                                                           ShardClaim.done.is_(False))))


def shard_progress(store: Store, audit_id: str) -> dict[str, tuple[int, int]]:
    """suite -> (shards done, shards in all) over every participant's claims."""
    with store.session() as s:
        rows = s.execute(select(ShardClaim.suite, ShardClaim.of, ShardClaim.done)
                         .where(ShardClaim.audit_id == audit_id)).all()
    out: dict[str, tuple[int, int]] = {}
    for suite, of, done in rows:
        d, n = out.get(suite, (0, of))
        out[suite] = (d + int(bool(done)), max(n, of))
    return out


def grant_finalize(store: Store, p: Participation) -> bool:
    """The final merge goes to one member per attempt."""
    with store.session() as s:
        result = s.execute(update(Audit).where(Audit.id == p.audit_id, *_current(p),
                                               Audit.cancel_requested.is_(False),
                                               or_(Audit.finalizer.is_(None), Audit.finalizer == p.member))
                           .values(finalizer=p.member))
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def succeed(store: Store, p: Participation, **values: Any) -> bool:
    """Write the result: only the current attempt's finalizer can."""
    with store.session() as s:
        return _move(s, p.audit_id, AuditStatus.SUCCEEDED, (_R,), _held(p), Audit.finalizer == p.member,
                     finished_at=utcnow(), **values)


def fail(store: Store, p: Participation, error: Mapping[str, Any]) -> bool:
    """Any participant of the current attempt can fail it (it stops the others)."""
    with store.session() as s:
        return _move(s, p.audit_id, AuditStatus.FAILED, (_R,), _held(p), finished_at=utcnow(),
                     error=dict(error))


def cancelled(store: Store, p: Participation) -> bool:
    """A running audit whose cancel was asked stops: the participant that saw it records it."""
    with store.session() as s:
        return _move(s, p.audit_id, AuditStatus.CANCELLED, (_R,), _held(p), finished_at=utcnow(),
                     error=error_body(ErrorCode.CANCELLED, "cancelled"))


def cancel(s: Session, audit_id: str) -> None:
    """Cancel over the API: a queued audit is cancelled at once; a running one is flagged and its
    participants stop at their next batch. A finished audit is left as it is."""
    if _move(s, audit_id, AuditStatus.CANCELLED, (_Q,), finished_at=utcnow(), cancel_requested=True,
             error=error_body(ErrorCode.CANCELLED, "cancelled before it started")):
        return
    s.execute(update(Audit).where(Audit.id == audit_id, Audit.status == _R.value).values(cancel_requested=True))


def dispatch_failed(store: Store, audit_id: str, message: str) -> bool:
    """The broker refused the audit at submit: it fails (the client got a 503), unless a worker got it."""
    with store.session() as s:
        return _move(s, audit_id, AuditStatus.FAILED, (_Q,), finished_at=utcnow(),
                     error=error_body(ErrorCode.BROKER_UNAVAILABLE, f"could not queue the audit: {message}"))


def refuse(s: Session, audit_id: str, error: Mapping[str, Any]) -> bool:
    """A queued audit that may not run (a scheduled run over its tenant's limit) fails before it is sent."""
    return _move(s, audit_id, AuditStatus.FAILED, (_Q,), finished_at=utcnow(), error=dict(error))


def mark_dispatched(store: Store, audit_id: str, when: datetime | None = None) -> None:
    with store.session() as s:
        s.execute(update(Audit).where(Audit.id == audit_id).values(last_dispatched_at=when or utcnow()))


def reap(store: Store, *, stale_s: float, max_attempts: int, now: datetime | None = None) -> dict[str, list[str]]:
    """Running audits with a heartbeat older than ``stale_s`` lost every participant: queued again
    (a new claim gets a new token, so the lost ones write nothing), failed after ``max_attempts``,
    or cancelled if that was asked. Returns {"requeued": [...], "failed": [...], "cancelled": [...]}."""
    now = now or utcnow()
    out: dict[str, list[str]] = {"requeued": [], "failed": []}
    with store.session() as s:
        stale = list(s.execute(select(Audit.id, Audit.heartbeat_at, Audit.attempts, Audit.cancel_requested).where(
            Audit.status == _R.value, Audit.heartbeat_at < now - timedelta(seconds=stale_s))).all())
    for audit_id, seen, attempts, cancel_requested in stale:
        guard = Audit.heartbeat_at == seen  # untouched since we looked: nobody came back meanwhile
        with store.session() as s:
            if cancel_requested:
                outcome = "cancelled"
                moved = _move(s, audit_id, AuditStatus.CANCELLED, (_R,), guard, finished_at=now,
                              error=error_body(ErrorCode.CANCELLED, "the audit was cancelled"))
            elif attempts >= max_attempts:
                outcome = "failed"
                moved = _move(s, audit_id, AuditStatus.FAILED, (_R,), guard, finished_at=now, error=error_body(
                    ErrorCode.WORKER_LOST, f"the worker died during {attempts} attempt(s); giving up"))
            else:
                outcome = "requeued"
                moved = _move(s, audit_id, _Q, (_R,), guard, worker=None, holder=None, finalizer=None,
                              last_dispatched_at=now)
        if moved:
            out.setdefault(outcome, []).append(audit_id)
            log.warning("audit %s: every worker lost (heartbeat %s); %s", audit_id, seen, outcome)
    return out


def due_for_redispatch(store: Store, *, redispatch_s: float, stale_s: float,
                       now: datetime | None = None) -> list[str]:
    """Audits the broker may have lost, each marked as dispatched now (so two beats send it once):

    - queued and not sent for ``redispatch_s`` (a lost message, a schedule run whose send failed);
    - running with a shard whose holder's heartbeat is stale, not sent for ``redispatch_s``: its
      other participants may all have left, so a fresh worker should join and take the shard.
    """
    now = now or utcnow()
    cutoff, stale = now - timedelta(seconds=redispatch_s), now - timedelta(seconds=stale_s)
    last = func.coalesce(Audit.last_dispatched_at, Audit.created_at)
    dead_shard = select(ShardClaim.key).where(ShardClaim.audit_id == Audit.id, ShardClaim.done.is_(False),
                                              ShardClaim.heartbeat_at < stale).exists()
    with store.session() as s:
        found = list(s.execute(select(Audit.id, Audit.last_dispatched_at).where(
            last < cutoff, or_(Audit.status == _Q.value, and_(Audit.status == _R.value, dead_shard)))).all())
    due: list[str] = []
    for audit_id, seen in found:
        with store.session() as s:
            guard = Audit.last_dispatched_at.is_(None) if seen is None else Audit.last_dispatched_at == seen
            result = s.execute(update(Audit).where(Audit.id == audit_id, guard).values(last_dispatched_at=now))
            if result.rowcount == 1:  # type: ignore[attr-defined]
                due.append(audit_id)
    return due


def copies(request: Mapping[str, Any], *, fanout: int, shard_size: int) -> int:
    """How many workers an audit can use: ``fanout``, no more than it has shards (when the
    request says how many samples; otherwise ``fanout``)."""
    n = (request.get("dataset") or {}).get("n_samples")
    suites = len(request.get("suites") or {}) or 1
    if not isinstance(n, int) or n < 1:
        return max(1, fanout)
    return max(1, min(fanout, suites * math.ceil(n / max(1, shard_size))))
